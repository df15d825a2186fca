"""`tinygptv convert ...` command line.

  tinygptv convert phi2 HF_DIR -o out.gguf [--outtype f32|f16|bf16|q8_0|q4_0|q4_k_m|q4_k_s|q4_1|q5_0|q5_1|q5_k_s|q5_k_m|q6_k|q2_k|q3_k_s|q3_k_m|q3_k_l|iq4_nl|iq4_xs]
  tinygptv convert tinygptv --phi2 DIR --eva eva_vit_g.pth --blip2 blip2_pretrained_flant5xxl.pth
      --stage-file TinyGPT-V_for_StageN.pth [--stage N] [--image-size S] -o out.gguf [--outtype ...]
"""

import argparse
import sys

from . import ConvertError
from . import schema


def _parser():
    ap = argparse.ArgumentParser(prog="tinygptv convert", description="Convert checkpoints to GGUF.")
    sub = ap.add_subparsers(dest="what", required=True)

    p = sub.add_parser("phi2", help="a Phi-2 Hugging Face folder -> GGUF (architecture phi2, llama.cpp compatible)")
    p.add_argument("hf_dir", help="folder with config.json, weights (safetensors or pytorch_model.bin) and tokenizer")
    p.add_argument("-o", "--output", required=True, help="output .gguf path")
    p.add_argument("--outtype", default="f16", choices=schema.OUTTYPES)
    p.add_argument("--name", help="general.name (default: from the folder)")
    p.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("tinygptv", help="TinyGPT-V checkpoints -> one GGUF (architecture tinygptv)")
    t.add_argument("--phi2", required=True, help="the base Phi-2 folder (any of the three layouts)")
    t.add_argument("--eva", required=True, help="eva_vit_g.pth")
    t.add_argument("--blip2", required=True, help="blip2_pretrained_flant5xxl.pth")
    t.add_argument("--stage-file", required=True, help="TinyGPT-V_for_StageN.pth")
    t.add_argument("-o", "--output", required=True, help="output .gguf path")
    t.add_argument("--outtype", default="f16", choices=schema.OUTTYPES)
    t.add_argument("--stage", type=int, choices=(1, 2, 3, 4), help="override the stage detected from the file")
    t.add_argument("--image-size", type=int, help="input image size (default: from the stage file's config)")
    t.add_argument("--vision-layers", type=int,
                   help="EVA ViT blocks used (default: blocks in eva file - 1, i.e. 39 of 40)")
    t.add_argument("--vision-head-size", type=int, default=schema.VIT_HEAD_SIZE)
    t.add_argument("--vision-heads", type=int, help="ViT head count (default: width / --vision-head-size)")
    t.add_argument("--qformer-head-size", type=int, default=schema.QFORMER_HEAD_SIZE)
    t.add_argument("--qformer-heads", type=int, help="Q-Former head count (default: width / --qformer-head-size)")
    t.add_argument("--cross-attention-freq", type=int, default=2)
    t.add_argument("--lora-alpha", type=float, help="override the stage file's lora_alpha")
    t.add_argument("--template", help=f"first-turn prompt template (contains {schema.IMAGE_PLACEHOLDER} and {schema.PROMPT_PLACEHOLDER})")
    t.add_argument("--turn-template", help=f"follow-up turn template (contains {schema.PROMPT_PLACEHOLDER})")
    t.add_argument("--system", help="system text put before the first turn")
    t.add_argument("--answer-suffix", help="text appended after each answer in the history")
    t.add_argument("--stop", action="append", help="stop string (repeatable; replaces the defaults)")
    t.add_argument("--name", help="general.name")
    t.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        if args.what == "phi2":
            from .phi2 import convert_phi2
            convert_phi2(args.hf_dir, args.output, outtype=args.outtype, progress=not args.no_progress,
                         name=args.name)
        else:
            from .tinygptv import convert_tinygptv
            chat = {k: v for k, v in (("template", args.template), ("turn_template", args.turn_template),
                                      ("system", args.system), ("answer_suffix", args.answer_suffix),
                                      ("stop_strings", args.stop)) if v is not None}
            convert_tinygptv(phi2_dir=args.phi2, eva=args.eva, blip2=args.blip2, stage_file=args.stage_file,
                             out_path=args.output, outtype=args.outtype, stage=args.stage,
                             image_size=args.image_size, vision_layers=args.vision_layers,
                             vision_head_size=args.vision_head_size, vision_heads=args.vision_heads,
                             qformer_head_size=args.qformer_head_size, qformer_heads=args.qformer_heads,
                             cross_attention_freq=args.cross_attention_freq, lora_alpha=args.lora_alpha,
                             chat=chat, name=args.name, progress=not args.no_progress)
    except ConvertError as e:
        print(f"tinygptv convert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinygptv convert: interrupted, no output written", file=sys.stderr)
        return 130
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
