"""The interactive chat of `tinygptv chat`: streamed answers, slash commands, readline editing and history."""
from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Any, Dict, List, Optional, TextIO, Tuple

from .cli_chat import printable

HELP = """commands:
  /image PATH      attach an image to the next question (a path typed in a question works too)
  /clear           forget the conversation (and the image)
  /set KEY VALUE   temp, top_p, top_k, min_p, repeat_penalty, seed, max_tokens; /set alone shows them
  /set system TEXT replace the system text (starts a new conversation)
  /stats           timings of the last answer
  /help            this text
  /quit, /exit     leave (or Ctrl+D)
  \"\"\"              begin and end a multi-line message
Ctrl+C stops an answer; task tags ([vqa], [caption], [grounding], [refer], ...) go in the question."""

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
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
        self.model = model
        self.system = system
        self.chat = model.new_chat(system=system)
        self.image = image  # attached to the next question
        self.sampling: Dict[str, Any] = dict(sampling or {})
        self.verbose = verbose
        self.stdin, self.out = stdin, stdout
        self.tty = stdout.isatty()
        self._readline = None

    # ---- terminal ------------------------------------------------------------------------------
    def say(self, s: str = "") -> None:
        self.out.write(s + "\n")
        self.out.flush()

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

    COMMANDS = ("/image ", "/clear", "/set ", "/stats", "/help", "/quit", "/exit")

    def _complete(self, text: str, state: int) -> Optional[str]:
        """Tab completion: commands at the start of a line, file paths after /image."""
        try:
            line = self._readline.get_line_buffer() if self._readline else text
            if line.startswith("/image "):
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

    def _input(self, prompt: str) -> str:
        if self.stdin is sys.stdin:
            return input(prompt)
        self.out.write(prompt)
        self.out.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

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
        self._setup_readline()
        m = self.model
        self.say(f"tinygptv chat: {os.path.basename(m.path)} ({m.arch}"
                 f"{', stage ' + str(m.metadata['tinygptv.stage']) if 'tinygptv.stage' in m.metadata else ''}, "
                 f"n_ctx {m.n_ctx}). /help for commands, Ctrl+D or /quit to leave.")
        if self.image:
            self.say(f"image: {self.image}")
        try:
            while True:
                try:
                    msg = self.read_message()
                except KeyboardInterrupt:
                    self.say("\n(Ctrl+D or /quit to leave)")
                    continue
                except EOFError:
                    self.say()
                    return 0
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
            self.chat.reset()
            self.image = None
            self.say("conversation cleared")
        elif cmd == "/image":
            self.set_image(rest)
        elif cmd == "/set":
            self.set_knob(rest)
        elif cmd == "/stats":
            r = self.chat.last
            self.say(r.summary() if r is not None else "no answer yet")
        else:
            self.say(f"unknown command {cmd!r} (/help lists them)")
        return None

    def set_image(self, arg: str) -> None:
        if not arg:
            self.say(f"image: {self.image or 'none'} (usage: /image PATH)")
            return
        try:
            words = shlex.split(arg)
        except ValueError:
            words = [arg]
        path = os.path.expanduser(" ".join(words))
        if not self.model.has_vision:
            self.say(f"error: this model ({self.model.arch}) has no vision encoder")
            return
        try:
            from .image import load_image
            load_image(path)
        except ValueError as e:
            self.say(f"error: {e}")
            return
        self.image = path
        self.say(f"image attached to the next question: {path}")

    def set_knob(self, arg: str) -> None:
        parts = arg.split(None, 1)
        if not parts:
            d = self.model.chat_defaults
            cur = {"temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k, "min_p": d.min_p,
                   "repetition_penalty": d.repetition_penalty, "seed": d.seed,
                   "max_new_tokens": self.model.default_max_new_tokens}
            cur.update(self.sampling)
            self.say(", ".join(f"{k} {v}" for k, v in cur.items()) + f", verbose {self.verbose}")
            return
        key = parts[0].lower()
        val = parts[1].strip() if len(parts) > 1 else ""
        if key == "verbose":
            from ._logging import set_verbose
            self.verbose = val.lower() not in ("0", "off", "false", "no")
            set_verbose(self.verbose)
            self.say(f"verbose {self.verbose}")
            return
        if key == "system":
            self.system = val
            self.chat = self.model.new_chat(system=val)
            self.say("system text set; new conversation")
            return
        if key not in KNOBS:
            self.say(f"unknown setting {key!r}; one of: temp, top_p, top_k, min_p, repeat_penalty, seed, "
                     f"max_tokens, system, verbose")
            return
        name, typ = KNOBS[key]
        try:
            v = typ(val)
            self.model._chat_params(**{name: v})  # validates the value
        except (TypeError, ValueError) as e:
            msg = str(e) if isinstance(e, ValueError) and name in str(e) else f"{key} needs a {typ.__name__} value"
            self.say(f"error: {msg}, got {val!r}" if "got" not in msg else f"error: {msg}")
            return
        self.sampling[name] = v
        self.say(f"{name} = {v}")

    def ask(self, msg: str) -> None:
        text, paths = find_image_paths(msg) if self.model.has_vision else (msg, [])
        image = self.image
        if paths:
            image = paths[-1]
            self.say(f"image: {image}")
        try:
            stream = self.chat.ask(text, image=image, stream=True, **self.sampling)
        except KeyboardInterrupt:
            self.say("\n[interrupted]")
            return
        except ValueError as e:  # overflow, bad image, bad setting
            hint = " (/clear starts a new conversation)" if type(e).__name__ == "ContextOverflowError" else ""
            self.say(f"error: {e}{hint}")
            return
        self.image = None  # it is in the conversation now
        try:
            for piece in stream:
                self.out.write(printable(piece) if self.tty else piece)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            self.say("\n[interrupted]")
            return
        self.say()  # with verbose on, the timings were logged to stderr
