"""The interactive chat of `tinygptv chat`: streamed answers, slash commands, readline editing and history."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, TextIO, Tuple

from .cli_chat import context_full, write_stream
from .term import Term, colour_code, stats_lines

HELP = """commands:
  /image PATH      attach an image to the next question (a path typed in a question works too)
  /image           show the image attached or in the conversation
  /clear           forget the conversation (and the image)
  /set KEY VALUE   temp, top_p, top_k (0 = no limit), min_p, repeat_penalty, seed (-1 = random),
                   max_tokens, verbose (on/off); /set alone shows them
  /set system TEXT replace the system text (starts a new conversation)
  /show            the model, the settings and the conversation
  /stats           timings of the last answer
  /save FILE       write the conversation (with its image paths) to a JSON file
  /load FILE       continue a conversation written by /save
  /help            this text
  /quit, /exit     leave (or Ctrl+D)
  \"\"\"              begin and end a multi-line message
Ctrl+C stops an answer; task tags ([vqa], [caption], [grounding], [refer], ...) go in the question.
When the conversation no longer fits in the context, its oldest turns are dropped (the image is kept)."""

SAVE_FORMAT = "tinygptv-chat"
TYPE_NAMES = {int: "an integer", float: "a number"}
ON, OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")

# /set names -> keyword of Chat.ask and the type of its value
KNOBS: Dict[str, Tuple[str, type]] = {
    "temp": ("temperature", float), "temperature": ("temperature", float),
    "top_p": ("top_p", float), "top-p": ("top_p", float),
    "top_k": ("top_k", int), "top-k": ("top_k", int),
    "min_p": ("min_p", float), "min-p": ("min_p", float),
    "repeat_penalty": ("repetition_penalty", float), "repetition_penalty": ("repetition_penalty", float),
    "seed": ("seed", int),
    "max_tokens": ("max_new_tokens", int), "max_new_tokens": ("max_new_tokens", int), "n": ("max_new_tokens", int),
}

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# a path-like word ending in an image extension, optionally quoted
_PATH_RE = re.compile(r"""(?:'([^']+)'|"([^"]+)"|((?:~|\.{1,2}|/)?[^\s'"]*[^\s'".,;:!?)]))""")


def find_image_paths(text: str) -> Tuple[str, List[str]]:
    """Image files named in a message: returns (text without them, [paths]). Only words that end in an
    image extension and name an existing file count (as ollama does)."""
    found: List[str] = []

    def repl(m: "re.Match[str]") -> str:
        word = m.group(1) or m.group(2) or m.group(3) or ""
        if word.lower().endswith(IMAGE_EXTS):
            p = os.path.expanduser(word.replace("\\ ", " "))
            if os.path.isfile(p):
                found.append(p)
                return ""
        return m.group(0)

    out = _PATH_RE.sub(repl, text)
    if not found:
        return text, found
    out = re.sub(r"[ \t]+([?.,!;:])", r"\1", re.sub(r"[ \t]{2,}", " ", out))
    return out.strip(), found


class Repl:
    def __init__(self, model, *, image: Optional[str] = None, system: Optional[str] = None,
                 sampling: Optional[Dict[str, Any]] = None, verbose: bool = False,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, term: Optional[Term] = None):
        self.model = model
        self.system = system
        self.chat = model.new_chat(system=system)
        self.image = image  # attached to the next question
        self.images: List[Optional[str]] = []  # the image path of each user turn of self.chat (or None)
        self.sampling: Dict[str, Any] = dict(sampling or {})
        self.verbose = verbose
        self.stdin, self.out = stdin, stdout
        self.term = term if term is not None and term.out is stdout else Term(stdout)
        self.tty = stdout.isatty()
        self._readline = None

    # ---- terminal ------------------------------------------------------------------------------
    def say(self, s: str = "", kind: Optional[str] = None) -> None:
        self.term.say(s, kind)

    def error(self, s: str) -> None:
        self.term.say(f"error: {s}", "error")

    def _setup_readline(self) -> None:
        if not self.stdin.isatty():
            return
        try:
            import readline
        except ImportError:  # pragma: no cover (Windows without pyreadline)
            return
        self._readline = readline
        self._history = os.environ.get("TINYGPTV_HISTORY") or os.path.join(
            os.path.expanduser("~"), ".cache", "tinygptv", "chat_history")
        try:
            readline.read_history_file(self._history)
        except OSError:
            pass
        readline.set_history_length(1000)
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self._complete)
        readline.parse_and_bind("tab: complete")

    COMMANDS = ("/image ", "/clear", "/set ", "/show", "/stats", "/save ", "/load ", "/help", "/quit", "/exit")

    def _complete(self, text: str, state: int) -> Optional[str]:
        """Tab completion: commands at the start of a line, file paths after /image, /save and /load."""
        try:
            line = self._readline.get_line_buffer() if self._readline else text
            if line.startswith(("/image ", "/save ", "/load ")):
                import glob
                options = [p + ("/" if os.path.isdir(p) else "") for p in sorted(glob.glob(os.path.expanduser(text) + "*"))]
            elif line == text and text.startswith("/"):
                options = [c for c in self.COMMANDS if c.startswith(text)]
            elif line.startswith("/set "):
                options = [k + " " for k in sorted(set(KNOBS) | {"system", "verbose"}) if k.startswith(text)]
            else:
                options = []
            return options[state] if state < len(options) else None
        except Exception:  # a completer must never raise into readline
            return None

    def _save_history(self) -> None:
        if self._readline is None:
            return
        try:
            os.makedirs(os.path.dirname(self._history) or ".", exist_ok=True)
            self._readline.write_history_file(self._history)
        except OSError:
            pass

    def _prompt(self, marker: str) -> str:
        """The input prompt: in colour on a terminal, the typed text then in the user's colour."""
        if not self.term.out_colour:
            return marker
        if self._readline is not None:  # readline must be told which bytes take no room on the line
            return f"\001{colour_code('prompt')}\002{marker}\001\033[0m{colour_code('user')}\002"
        return f"{colour_code('prompt')}{marker}\033[0m{colour_code('user')}"

    def _input(self, marker: str) -> str:
        prompt = self._prompt(marker)
        try:
            if self.stdin is sys.stdin:
                return input(prompt)
            self.out.write(prompt)
            self.out.flush()
            line = self.stdin.readline()
            if not line:
                raise EOFError
            return line.rstrip("\n")
        finally:
            if self.term.out_colour:
                self.out.write("\033[0m")
                self.out.flush()

    def read_message(self) -> str:
        """One message; lines between \"\"\" and \"\"\" form one multi-line message."""
        line = self._input(">>> ")
        if not line.lstrip().startswith('"""'):
            return line
        first = line.lstrip()[3:]
        if first.rstrip().endswith('"""'):
            return first.rstrip()[:-3]
        lines = [first] if first else []
        while True:
            line = self._input("... ")
            if line.rstrip().endswith('"""'):
                last = line.rstrip()[:-3]
                if last:
                    lines.append(last)
                return "\n".join(lines)
            lines.append(line)

    # ---- main loop -----------------------------------------------------------------------------
    def run(self) -> int:
        if hasattr(self.stdin, "reconfigure"):  # undecodable bytes reach ask(), which names them
            try:
                self.stdin.reconfigure(errors="surrogateescape")
            except (ValueError, OSError):
                pass
        self._setup_readline()
        m = self.model
        self.say(f"tinygptv chat: {os.path.basename(m.path)} ({m.arch}"
                 f"{', stage ' + str(m.metadata['tinygptv.stage']) if 'tinygptv.stage' in m.metadata else ''}, "
                 f"n_ctx {m.n_ctx}). /help for commands, Ctrl+D or /quit to leave.", "dim")
        if self.image:
            self.say(f"image: {self.image}")
        try:
            while True:
                try:
                    msg = self.read_message()
                except KeyboardInterrupt:
                    self.say("\n(Ctrl+D or /quit to leave)", "dim")
                    continue
                except EOFError:
                    self.say()
                    return 0
                except UnicodeDecodeError as e:
                    self.error(f"the input is not valid UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                               f"the line was ignored")
                    continue
                if not msg.strip():
                    continue
                if msg.strip().startswith("/"):
                    if self.command(msg.strip()) == "quit":
                        return 0
                    continue
                self.ask(msg)
        finally:
            self._save_history()

    def command(self, line: str) -> Optional[str]:
        cmd, _, rest = line.partition(" ")
        cmd, rest = cmd.lower(), rest.strip()
        if cmd in ("/quit", "/exit", "/bye"):
            return "quit"
        if cmd in ("/help", "/?"):
            self.say(HELP)
        elif cmd == "/clear":
            self.new_conversation()
            self.image = None
            self.say("conversation cleared")
        elif cmd == "/image":
            self.set_image(rest)
        elif cmd == "/set":
            self.set_knob(rest)
        elif cmd == "/show":
            self.show()
        elif cmd == "/stats":
            r = self.chat.last
            self.say(stats_lines(r) if r is not None else "no answer yet", "dim" if r is not None else None)
        elif cmd == "/save":
            self.save(rest)
        elif cmd == "/load":
            self.load(rest)
        else:
            self.say(f"unknown command {cmd!r} (/help lists them)")
        return None

    def new_conversation(self) -> None:
        self.chat.reset()
        self.chat = self.model.new_chat(system=self.system)
        self.images = []

    def _path_arg(self, arg: str) -> str:
        try:
            words = shlex.split(arg)
        except ValueError:
            words = [arg]
        return os.path.expanduser(" ".join(words))

    def conversation_image(self) -> Optional[str]:
        """The latest image sent in the conversation."""
        return next((p for p in reversed(self.images) if p), None)

    def set_image(self, arg: str) -> None:
        if not arg:
            if not self.model.has_vision:
                self.say(f"no image: this model ({self.model.arch}) has no vision encoder")
            elif self.image:
                self.say(f"image: {self.image} (attached to the next question)")
            elif self.conversation_image():
                self.say(f"image: {self.conversation_image()} (in the conversation)")
            else:
                self.say("no image (/image PATH attaches one)")
            return
        path = self._path_arg(arg)
        if not self.model.has_vision:
            self.error(f"this model ({self.model.arch}) has no vision encoder")
            return
        try:
            from .image import load_image
            load_image(path)
        except ValueError as e:
            self.error(str(e))
            return
        self.image = path
        self.say(f"image attached to the next question: {path}")

    def settings(self) -> Dict[str, Any]:
        d = self.model.chat_defaults
        cur: Dict[str, Any] = {"temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k, "min_p": d.min_p,
                               "repetition_penalty": d.repetition_penalty, "seed": d.seed,
                               "max_new_tokens": self.model.default_max_new_tokens}
        cur.update(self.sampling)
        return cur

    def _settings_line(self) -> str:
        from .cli import fmt_value

        def show(k: str, v: Any) -> str:
            if k == "seed" and v is None:
                return "random"
            if k == "top_k" and v <= 0:
                return f"{v} (no limit)"
            return fmt_value(v) if isinstance(v, float) else str(v)
        return ", ".join(f"{k} {show(k, v)}" for k, v in self.settings().items()) + \
            f", verbose {'on' if self.verbose else 'off'}"

    def set_knob(self, arg: str) -> None:
        from .cli import fmt_value
        parts = arg.split(None, 1)
        if not parts:
            self.say(self._settings_line())
            return
        key = parts[0].lower()
        val = parts[1].strip() if len(parts) > 1 else ""
        if key == "verbose":
            if val.lower() not in ON + OFF:
                self.error(f"verbose needs on or off, got {val!r}")
                return
            from ._logging import set_verbose
            self.verbose = val.lower() in ON
            set_verbose(self.verbose)
            self.say(f"verbose {'on' if self.verbose else 'off'}")
            return
        if key == "system":
            self.system = val
            self.new_conversation()
            self.say("system text set; new conversation")
            return
        if key not in KNOBS:
            self.error(f"unknown setting {key!r}; one of: temp, top_p, top_k, min_p, repeat_penalty, seed, "
                       f"max_tokens, system, verbose")
            return
        name, typ = KNOBS[key]
        try:
            v = typ(val)
            if name == "seed":
                if v == -1:
                    self.sampling.pop("seed", None)
                    self.say("seed = random")
                    return
                if not 0 <= v < 1 << 64:
                    raise ValueError(f"seed must be in [0, 2^64), or -1 for a random seed, got {val!r}")
            if name == "top_k" and v < 0:
                raise ValueError(f"top_k must be >= 0 (0 = no limit), got {val!r}")
            self.model._chat_params(**{name: v})  # validates the value
        except (TypeError, ValueError) as e:
            msg = str(e) if isinstance(e, ValueError) and name in str(e) else \
                f"{key} needs {TYPE_NAMES[typ]}"
            self.error(f"{msg}, got {val!r}" if "got" not in msg else msg)
            return
        self.sampling[name] = v
        self.say(f"{name} = {fmt_value(v) if isinstance(v, float) else v}" + (" (no limit)" if name == "top_k" and v == 0 else ""))

    def show(self) -> None:
        m = self.model
        md = m.metadata
        stage = f", stage {md['tinygptv.stage']}" if "tinygptv.stage" in md else ""
        lines = [f"model:        {m.path}",
                 f"              {m.arch}{stage}, {m._model.file_size / 1e6:.1f} MB, {m._model.n_layer} layers, "
                 f"n_embd {m.n_embd}, vocab {m.n_vocab}, trained context {m._model.n_ctx_train}"]
        if m.has_vision:
            lines.append(f"vision:       {m.image_size} px pictures, {m.n_image_tokens} positions each")
        else:
            lines.append("vision:       none (a text-only model)")
        turns = sum(1 for h in self.chat.history if h.role == "user")
        lines.append(f"context:      n_ctx {m.n_ctx}, {m.n_threads} threads; this conversation {turns} turn"
                     f"{'s' if turns != 1 else ''}, {self.chat.n_tokens} positions")
        img = (f"{self.image} (attached to the next question)" if self.image else
               f"{self.conversation_image()} (in the conversation)" if self.conversation_image() else "none")
        lines.append(f"image:        {img}")
        system = self.chat.template.system
        lines.append(f"system:       {system!r}" if len(system) <= 100 else f"system:       {system[:97]!r}...")
        lines.append(f"template:     {m.chat_template.template!r}")
        lines.append(f"settings:     {self._settings_line()}")
        self.say("\n".join(lines))

    # ---- saving and loading --------------------------------------------------------------------
    def messages(self) -> List[dict]:
        """The conversation as OpenAI-shaped messages (images as file:// URLs of absolute paths)."""
        out: List[dict] = []
        if self.system is not None:
            out.append({"role": "system", "content": self.system})
        k = 0
        for h in self.chat.history:
            if h.role == "user":
                path = self.images[k] if k < len(self.images) else None
                k += 1
                if path:
                    out.append({"role": "user", "content": [
                        {"type": "text", "text": h.text},
                        {"type": "image_url", "image_url": {"url": "file://" + os.path.abspath(path)}}]})
                else:
                    out.append({"role": "user", "content": h.text})
            else:
                msg: Dict[str, Any] = {"role": "assistant", "content": h.text}
                if h.finish_reason:
                    msg["finish_reason"] = h.finish_reason
                out.append(msg)
        return out

    def save(self, arg: str) -> None:
        if not arg:
            self.error("usage: /save FILE")
            return
        path = self._path_arg(arg)
        doc = {"format": SAVE_FORMAT, "version": 1, "model": os.path.abspath(self.model.path),
               "settings": dict(self.sampling), "messages": self.messages()}
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
                f.write("\n")
        except OSError as e:
            self.error(f"cannot write {path}: {e.strerror or e}")
            return
        n = sum(1 for h in self.chat.history if h.role == "user")
        self.say(f"saved {n} turn{'s' if n != 1 else ''} to {path}")

    def load(self, arg: str) -> None:
        from .chat import Chat
        if not arg:
            self.error("usage: /load FILE")
            return
        path = self._path_arg(arg)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as e:
            self.error(f"cannot read {path}: {e.strerror or e}")
            return
        except (ValueError, UnicodeDecodeError) as e:
            self.error(f"{path} is not a JSON file: {e}")
            return
        msgs = doc.get("messages") if isinstance(doc, dict) else doc
        if not isinstance(msgs, list):
            self.error(f"{path} holds no conversation (a 'messages' list, as /save writes)")
            return
        system = None
        if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system":
            system = msgs[0].get("content")
        images: List[Optional[str]] = []
        for i, msg in enumerate(msgs):
            if isinstance(msg, dict) and msg.get("role") == "user":
                images.append(_image_of(msg))
        if any(images) and not self.model.has_vision:
            self.error(f"{path} holds images, and this model ({self.model.arch}) has no vision encoder")
            return
        settings = doc.get("settings") if isinstance(doc, dict) else None
        try:
            chat = Chat.from_messages(self.model, [{k: v for k, v in m.items() if k != "finish_reason"}
                                                   if isinstance(m, dict) else m for m in msgs])
            if isinstance(settings, dict):
                settings = {k: v for k, v in settings.items() if k in {n for n, _ in KNOBS.values()}}
                self.model._chat_params(**settings)
        except (ValueError, TypeError) as e:
            self.error(f"cannot load {path}: {e}")
            return
        self.chat.reset()
        self.chat, self.images, self.system, self.image = chat, images, system, None
        if isinstance(settings, dict):
            self.sampling = settings
        for h in chat.history:  # the conversation so far, questions marked as they were typed
            if h.role == "user":
                self.say("> " + h.text.replace("\n", "\n  "), "user")
            else:
                self.say(h.text)
        n = len(images)
        self.say(f"loaded {n} turn{'s' if n != 1 else ''} ({chat.n_tokens} positions) from {path}", "dim")

    # ---- asking --------------------------------------------------------------------------------
    def _open(self, text: str, image: Optional[str]) -> Tuple[Any, int]:
        """Asks the question: returns its stream (not started) and how many of the oldest turns were dropped
        because the conversation no longer fit in the context (the latest image then stays, moved to the
        first turn kept or to this question)."""
        from ._core import ContextOverflowError
        from .chat import Chat
        try:
            stream = self.chat.ask(text, image=image, stream=True, **self.sampling)
            self.images.append(image)
            return stream, 0
        except ContextOverflowError as e:
            if not self.chat.history:
                raise
            overflow = e
        msgs = self.messages()
        system = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
        turns: List[List[dict]] = []
        for msg in msgs[len(system):]:
            if msg["role"] == "user" or not turns:
                turns.append([])
            turns[-1].append({k: v for k, v in msg.items() if k != "finish_reason"})
        keep = self.conversation_image() if image is None else None
        for drop in range(1, len(turns) + 1):
            kept = [m for t in turns[drop:] for m in t]
            images = [_image_of(m) for m in kept if m["role"] == "user"]
            img = image
            if keep and not any(images):
                if kept:
                    text0 = kept[0]["content"] if isinstance(kept[0]["content"], str) else ""
                    kept[0] = {"role": "user", "content": [
                        {"type": "text", "text": text0},
                        {"type": "image_url", "image_url": {"url": "file://" + os.path.abspath(keep)}}]}
                    images[0] = keep
                else:
                    img = keep
            try:
                chat = Chat.from_messages(self.model, system + kept)
                stream = chat.ask(text, image=img, stream=True, **self.sampling)
            except ContextOverflowError:
                continue
            except (ValueError, OSError):  # an image of the conversation is gone: start without it
                continue
            self.chat.reset()
            self.chat, self.images = chat, images + [img]
            return stream, drop
        raise overflow

    def ask(self, msg: str) -> None:
        from .cli import CLIError, check_text
        try:
            check_text(msg, "the message")
        except CLIError as e:
            self.error(str(e))
            return
        text, paths = find_image_paths(msg) if self.model.has_vision else (msg, [])
        image = self.image
        if paths:
            image = paths[-1]
            self.say(f"image: {image}")
        t0 = time.perf_counter()
        status = self.term.status("encoding the image" if image is not None else "processing the prompt").start()
        try:
            try:
                stream, dropped = self._open(text, image)
            except KeyboardInterrupt:
                status.stop()
                self.say("[interrupted]")
                return
            except ValueError as e:  # a prompt too long for the context, a bad image, a bad setting
                status.stop()
                self.error(str(e))
                return
            self.image = None  # it is in the conversation now
            if dropped:
                status.stop()
                turns = f"first {dropped} turns were" if dropped != 1 else "first turn was"
                self.say(f"(the conversation no longer fit in the context of {self.model.n_ctx} positions: its "
                         f"{turns} dropped)", "dim")
            try:
                write_stream(self.term, stream, status, self.tty)
            except KeyboardInterrupt:
                self.term.end_line()
                self.say("[interrupted]")
                return
        finally:
            status.stop()
        self.term.end_line()
        res = stream.result
        if context_full(self.model, self.chat, res):
            self.say(f"(the answer reached the end of the context, {self.model.n_ctx} positions)", "dim")
        if self.verbose:
            self.say(stats_lines(res, (time.perf_counter() - t0) * 1e3), "dim")


def _image_of(msg: dict) -> Optional[str]:
    """The image path of an OpenAI-shaped user message, if it has one."""
    content = msg.get("content")
    if not isinstance(content, list):
        return None
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and not url.startswith("data:"):
                return url[len("file://"):] if url.startswith("file://") else url
        elif isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), str):
            return part["image"]
    return None
