"""Sample from a base model plus a (DP-)fine-tuned LoRA adapter (seed 004, Types B and D).

    # Type B: synthetic instructions from a model trained with prompt_style uncond_generation
    python sample.py --model_name default --adapter_path results/dp_models/<hash>/final_model \
        --prompt_style uncond_generation --num_samples 64 --top_p 0.95 --output_file samples.jsonl
    # Type D: answer every line of an instructions file with the vicuna prompt
    python sample.py --adapter_path results/dp_models/<hash>/final_model --prompt_style vicuna \
        --instruction_file instructions.txt --output_file answers.jsonl

Output: JSONL, {"text"} per sample (Type B) or {"instruction", "response"} per instruction (Type D).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from privlm import config as C
from privlm import data, models
from privlm.errors import UserError, cli
from privlm.io import atomic_write_text, read_string_list, refuse_existing


@dataclass
class SampleConfig:
    model_path: str = C.field("default", aliases=("--model_name",))
    adapter_path: str | None = C.field(None, help="LoRA adapter folder (final_model of dp_finetune.py)")
    prompt_style: str = C.field("uncond_generation", choices=["uncond_generation", "vicuna"])
    instruction_file: str | None = C.field(None, help="one instruction per line (.txt) or a JSON list (vicuna)")
    num_samples: int = C.field(16, help="uncond_generation: how many samples")
    max_seq_len: int = C.field(256, help="new tokens at most")
    top_p: float = C.field(0.95)
    temperature: float = C.field(1.0)
    batch_size: int = C.field(16)
    seed: int = C.field(42)
    dtype: str = C.field("auto", choices=["auto", "float32", "bfloat16", "float16"])
    job_sess: str | None = C.field(None, help="seed 004: default output inference_outputs/<job_sess>/<samples or "
                                              "responses>.jsonl")
    output_file: str | None = C.field(None)
    overwrite: bool = C.field(False)

    def validate(self):
        p = [f"{k}: must be >= 1" for k in ("num_samples", "max_seq_len", "batch_size") if getattr(self, k) < 1]
        if not 0 < self.top_p <= 1:
            p.append("top_p: must be in (0, 1]")
        if self.temperature <= 0:
            p.append("temperature: must be > 0")
        if self.prompt_style == "vicuna" and not self.instruction_file:
            p.append("instruction_file: required with prompt_style vicuna")
        return p


def load_instructions(path: str) -> list[str]:
    items = read_string_list(path, "instruction file")
    if not items:
        raise UserError(f"instruction file {path} holds no instructions")
    return items


@cli
def main(argv: list[str] | None = None) -> list[dict]:
    cfg = C.parse(SampleConfig, argv, __doc__)
    kind = "responses" if cfg.prompt_style == "vicuna" else "samples"
    out_path = cfg.output_file or (f"inference_outputs/{cfg.job_sess}/{kind}.jsonl" if cfg.job_sess
                                   else f"inference_outputs/{kind}.jsonl")
    refuse_existing(out_path, cfg.overwrite)
    instructions = load_instructions(cfg.instruction_file) if cfg.prompt_style == "vicuna" else None
    if cfg.adapter_path and not (Path(cfg.adapter_path) / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter (adapter_config.json) in {cfg.adapter_path}")
    torch.manual_seed(cfg.seed)
    tok = models.load_tokenizer(cfg.model_path, padding_side="left")
    model = models.load_model(cfg.model_path, dtype=cfg.dtype, device=models.device())
    if cfg.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter_path)
    model.eval()
    start = [tok.bos_token_id] if tok.bos_token_id is not None else [tok.eos_token_id]
    if instructions is None:
        prompts = [start] * cfg.num_samples
    else:
        prompts = [start + tok(data.VICUNA.format(i), add_special_tokens=False)["input_ids"] for i in instructions]
    rows = []
    for s in tqdm(range(0, len(prompts), cfg.batch_size), desc="sampling"):
        batch = prompts[s:s + cfg.batch_size]
        inputs = data.left_padded(batch, tok.pad_token_id, model.device)
        with torch.no_grad():
            gen = model.generate(**inputs, do_sample=True, top_p=cfg.top_p,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_seq_len,
                                 pad_token_id=tok.pad_token_id)
        for j, row in enumerate(gen[:, inputs["input_ids"].shape[1]:]):
            text = tok.decode(row, skip_special_tokens=True).strip()
            rows.append({"text": text} if instructions is None else
                        {"instruction": instructions[s + j], "response": text})
    atomic_write_text(out_path, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"[privlm] wrote {len(rows)} samples to {out_path}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
