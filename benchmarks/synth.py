"""Generation throughput: raw vLLM, `synth generate` (structured off and on), transformers.

All contenders get the same prompts, model and sampling, in one process run, and
the script prints output tokens/s and the ratios the Synth issue targets:
synth >= 0.9x raw vLLM, >= 1.4x transformers, and 100% of structured samples parse.
Raw vLLM with the same JSON schema is the floor for structured output: it shows what
the grammar itself costs, apart from what synth adds.

    python benchmarks/synth.py --prompts 256 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# This file is named like the `synth` package: put the repository first, ahead of benchmarks/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hf-batch", type=int, default=8)
    args = parser.parse_args()
    console = Console()

    from curate.llm import EngineConfig, LLMEngine, SamplingConfig
    from synth.generate import generate, plan_samples
    from synth.task import parse_task

    task = parse_task({
        "name": "bench", "instructions": "Write one short customer-support ticket and its category.", "n": args.prompts,
        # maxLength bounds every reply, so a reply cut off at max_tokens can be finished (see synth.generate)
        "output": {"fields": {"text": {"type": "string", "maxLength": 200}, "label": {"type": "string", "enum": ["billing", "technical", "account", "shipping"]}},
                   "user": "{text}", "assistant": "{label}", "label": "{label}"},
        "axes": {"persona": ["new customer", "admin", "developer", "reseller"], "tone": ["calm", "angry"],
                 "product": ["mobile app", "web app", "API", "desktop app"]},
        # temperature 0: every contender writes the same number of tokens per prompt, so tokens/s compare like with like
        "sampling": {"temperature": 0.0, "max_tokens": args.max_tokens, "seed": 0},
    })
    chats = [p.chat for p in plan_samples(task, 0)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens, seed=0)
    rows = []

    engine = LLMEngine(EngineConfig(max_model_len=1024))
    engine.chat(chats[:4], sampling)  # warm-up: first-batch compilation is not throughput

    from vllm import SamplingParams  # the floor: vLLM called directly
    from vllm.sampling_params import StructuredOutputsParams

    def raw_chat(name: str, structured_outputs=None) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, seed=0, structured_outputs=structured_outputs)
        start = time.perf_counter()
        outputs = engine._llm.chat(chats, params, use_tqdm=False)
        rows.append((name, sum(len(o.outputs[0].token_ids) for o in outputs), time.perf_counter() - start, None))

    raw_chat("raw vllm.LLM.chat")
    # The floor for structured output: vLLM itself with the same JSON schema (its grammar backend,
    # and replies that end when the object closes), so that synth's own overhead shows apart.
    raw_chat("raw vllm.LLM.chat + JSON schema", StructuredOutputsParams(json=task.output.json_schema()))

    with tempfile.TemporaryDirectory() as tmp:
        for structured in (False, True):
            out = Path(tmp) / f"s{int(structured)}.parquet"
            start = time.perf_counter()
            result = generate(task, engine, out, model_name="default", structured=structured,
                              batch_size=args.prompts, progress=False)
            elapsed = time.perf_counter() - start
            parsed = result.usage["parsed"] / args.prompts
            rows.append((f"synth generate (structured {'on' if structured else 'off'})",
                         result.usage["completion_tokens"], elapsed, parsed))
    engine.close()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = str(engine.model.path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # as the engine runs (curate.llm)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    hf_tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(chats), args.hf_batch):
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats[i : i + args.hf_batch]]
            enc = tok(texts, return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            hf_tokens += int((new != (tok.pad_token_id or tok.eos_token_id)).sum())
    rows.append((f"transformers generate (batch {args.hf_batch}, {str(dtype).removeprefix('torch.')})", hf_tokens, time.perf_counter() - start, None))

    table = Table(title=f"{args.prompts} prompts x {args.max_tokens} new tokens, SmolLM2-135M, CPU")
    for col in ("contender", "output tokens", "seconds", "tokens/s", "parsed"):
        table.add_column(col)
    rates = {}
    for name, tokens, secs, parsed in rows:
        rates[name] = tokens / secs
        table.add_row(name, str(tokens), f"{secs:.1f}", f"{tokens / secs:.1f}", "" if parsed is None else f"{parsed:.0%}")
    console.print(table)
    raw, raw_json, hf = rates[rows[0][0]], rates[rows[1][0]], rates[rows[-1][0]]
    checks = {}
    for name, _, _, parsed in rows[2:4]:
        checks[f"{name} / raw vLLM >= 0.9"] = rates[name] / raw >= 0.9
        checks[f"{name} / transformers >= 1.4"] = rates[name] / hf >= 1.4
        console.print(f"{name}: {rates[name] / raw:.2f}x raw vLLM, {rates[name] / hf:.2f}x transformers")
    on = rows[3][0]
    console.print(f"{on}: {rates[on] / raw_json:.2f}x raw vLLM with the same schema "
                  f"(which itself runs at {raw_json / raw:.2f}x raw vLLM without one)")
    checks["structured samples parse = 100%"] = rows[3][3] == 1.0
    for name, ok in checks.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(json.dumps({name: round(rate, 2) for name, rate in rates.items()}))


if __name__ == "__main__":
    main()
