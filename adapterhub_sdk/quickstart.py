"""``adapterhub quickstart``: the whole product in two minutes on a laptop CPU.

Builds a small base model, trains two LoRA adapters for real on two toy tasks,
publishes them pinned to the base's fingerprint, resolves them against three bases,
pulls one back, loads both with PEFT and runs one batch where each row uses its own
adapter. Everything goes to the default registry (``ADAPTERHUB_HOME``). Its output is its
own: third-party progress bars, log lines and warnings are silenced while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

from .errors import VersionConflictError

VOCAB = list("0123456789>") + ["<s>"]
BOS = VOCAB.index("<s>")
ARROW = VOCAB.index(">")
TASKS = {
    "successor": lambda d: (d + 1) % 10,
    "predecessor": lambda d: (d - 1) % 10,
}


def _say(text: str) -> None:
    click.echo(textwrap.fill(" ".join(text.split()), width=88, break_on_hyphens=False, break_long_words=False))


def _step(n: int, title: str) -> None:
    click.echo("")
    click.secho(f"[{n}/7] {title}", bold=True)


@contextlib.contextmanager
def _quiet_third_parties() -> Iterator[None]:
    """Silence transformers', huggingface_hub's and tqdm's progress bars, logs and warnings
    (put back afterwards), so that what the quick start prints is ours alone."""
    import huggingface_hub.utils as hf_utils
    import transformers.utils.logging as tf_logging

    verbosity = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    hub_bars = not hf_utils.are_progress_bars_disabled()
    tqdm_env = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    hf_utils.disable_progress_bars()
    loggers = {name: logging.getLogger(name).level for name in ("huggingface_hub", "peft", "torch")}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for module in ("transformers", "peft", "torch", "huggingface_hub", "accelerate", "tqdm"):
                warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
        if hub_bars:
            hf_utils.enable_progress_bars()
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _build_base(path: Path, *, hidden: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=16, bos_token_id=BOS, eos_token_id=BOS, pad_token_id=BOS)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return model


def _prompts(digits):
    import torch

    return torch.tensor([[BOS, d, ARROW] for d in digits])


def _train(base_dir: Path, task: str, out: Path, steps: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                          "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)  # type: ignore[assignment]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    fn = TASKS[task]
    g = torch.Generator().manual_seed(7)
    model.train()
    for step in range(1, steps + 1):
        digits = torch.randint(0, 10, (64,), generator=g)
        targets = torch.tensor([fn(int(d)) for d in digits])
        logits = model(input_ids=_prompts(digits.tolist())).logits[:, -1, :]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % max(1, steps // 5) == 0 or step == steps:
            with torch.no_grad():
                acc = (logits.argmax(-1) == targets).float().mean().item()
            click.echo(f"    {task:<12} step {step:>4}/{steps}  loss {loss.item():.3f}  accuracy {acc:.0%}")
    model.eval()
    model.save_pretrained(out)


def _publish(reg, adapter_dir: Path, name: str, base_dir: Path, task: str):
    version = "1.0.0"
    while True:
        try:
            return reg.publish(adapter_dir, name=name, version=version, base=base_dir, tasks=[task],
                               license="apache-2.0", description=f"toy {task} adapter from adapterhub quickstart")
        except VersionConflictError:
            # an earlier quickstart published other weights under this version: versions never change
            latest = reg.versions(name)[0].version
            major, minor, patch = (int(x) for x in latest.split("-")[0].split("."))
            version = f"{major}.{minor}.{patch + 1}"


def run(*, workdir: str | None = None, steps: int = 100) -> None:
    t0 = time.perf_counter()
    from .fingerprint import fingerprint
    from .home import home_dir
    from .registry import Registry

    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="adapterhub-quickstart-")
        work = Path(tmp)
    else:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_third_parties():
            _run(work, steps, fingerprint, Registry, home_dir())
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"\nDone in {time.perf_counter() - t0:.0f} s. Next: 'adapterhub list', "
               "'adapterhub show quickstart/successor', 'adapterhub --help'.")
    if tmp:
        _say(f"""The models, trained adapters and pulled copies were built in {tmp}, now deleted; the
        published adapters stay in the registry. To keep the files, give the quick start a directory:""")
        click.echo("    adapterhub quickstart --workdir ./quickstart")
    else:
        _say(f"The models, trained adapters and pulled copies are in {work} (kept).")


def _run(work: Path, steps: int, fingerprint, Registry, home: Path) -> None:  # noqa: ANN001
    click.secho("adapterhub quickstart", bold=True)
    _say("""One base model, many small task adapters. This tour trains two LoRA adapters on a tiny
    model, stores them in your local registry pinned to a fingerprint of the base's weights, finds
    them again by the base they fit, and serves both from one copy of the base.""")
    click.echo(f"    registry: {home} (set ADAPTERHUB_HOME to use another place)")

    _step(1, "Build a base model and fingerprint its weights")
    import torch

    torch.set_num_threads(1)  # a model this small runs fastest on one thread, and fights no one for cores
    base_dir = work / "base"
    _build_base(base_dir, hidden=128, seed=0)
    fp = fingerprint(base_dir)
    _say(f"""A 4-layer Llama built from a config ({fp.n_params:,} parameters, {_size(fp.total_bytes)}),
    saved with save_pretrained. Its fingerprint hashes every tensor's name, dtype, shape and bytes,
    so it names these exact weights, not a model name:""")
    click.echo(f"    fingerprint     {fp.digest}")
    click.echo(f"    arch signature  {fp.arch_signature}")

    _step(2, "Train two LoRA adapters on two toy tasks")
    _say("""Task 'successor' maps a digit to the next one (3>4), task 'predecessor' to the one before
    (3>2). Only the LoRA matrices train; the base stays frozen and shared.""")
    adapters = {}
    for task in TASKS:
        out = work / f"lora-{task}"
        _train(base_dir, task, out, steps)
        adapters[task] = out

    _step(3, "Publish both, pinned to the base fingerprint")
    reg = Registry.open()
    try:
        published = {}
        for task, path in adapters.items():
            res = _publish(reg, path, f"quickstart/{task}", base_dir, task)
            published[task] = res
            what = "new" if res.created else "identical to an earlier run, nothing written"
            click.echo(f"    {res.name}@{res.version}  {res.digest[:19]}  ({what})")
        _say("""Each version is immutable; its files live once in a content-addressed blob store, and
        every tensor was checked against the base before anything was written.""")

        _step(4, "Resolve: which adapters fit which base?")
        other_weights = work / "base-other-weights"
        _build_base(other_weights, hidden=128, seed=1)
        other_shape = work / "base-other-shape"
        _build_base(other_shape, hidden=96, seed=0)
        for label, b in (("the same base", base_dir), ("same architecture, other weights", other_weights),
                         ("another shape (hidden 96)", other_shape)):
            hits = [h for h in reg.resolve(b, include_incompatible=True) if h.name.startswith("quickstart/")
                    and any(h.version == p.version and h.name == p.name for p in published.values())]
            click.echo(f"    against {label}:")
            for h in hits:
                reason = f"  ({h.reasons[0]})" if h.verdict == "incompatible" and h.reasons else ""
                click.echo(f"      {h.verdict:<13} {h.ref}{reason}")
        _say("""'exact' means the very weights the adapter was trained on. 'structural' means every
        tensor it touches exists with the right shape, but the weights differ: it will load, results may
        not be what you tested. 'incompatible' is refused with the reason.""")

        _step(5, "Pull one adapter and load it with PEFT")
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        pulled = {}
        for task, res in published.items():
            dest = work / f"pulled-{task}"
            pulled[task] = reg.pull(f"{res.name}@^{res.version.split('.')[0]}", dest, overwrite=True)
        click.echo(f"    adapterhub pull quickstart/successor@^1 --out {pulled['successor']}")
        click.echo(f"    files: {', '.join(sorted(p.name for p in pulled['successor'].iterdir()))}")
        base_model = AutoModelForCausalLM.from_pretrained(base_dir)
        model = PeftModel.from_pretrained(base_model, pulled["successor"], adapter_name="successor")
        model.load_adapter(pulled["predecessor"], adapter_name="predecessor")
        model.eval()
        _say("Every file was re-hashed against the manifest on the way out; PEFT loads the directory as is.")

        _step(6, "One batch, each row with its own adapter")
        digits = [3, 3, 3, 7, 7, 0]
        names = ["successor", "predecessor", "__base__", "successor", "predecessor", "predecessor"]
        labels = {"__base__": "none (base only)"}
        with torch.no_grad():
            logits = model(input_ids=_prompts(digits), adapter_names=names).logits[:, -1, :]
        answers = logits.argmax(-1).tolist()
        correct = 0
        for d, name, a in zip(digits, names, answers):
            want = TASKS[name](d) if name in TASKS else None
            ok = ("  untrained: no right answer" if want is None
                  else ("  ok" if a == want else f"  (expected {want})"))
            correct += want is not None and a == want
            click.echo(f"    {d}>{VOCAB[a]:<2} adapter {labels.get(name, name):<17}{ok}")
        _say("""One forward pass over one copy of the base: rows 1 and 2 ask the same question of two
        adapters. Row 3 has no adapter: the base alone, which never learned either task, answers
        whatever its random weights favour, so its digit is neither right nor wrong; it shows that
        rows without an adapter run in the same batch on the unchanged base.""")

        _step(7, "Disk: adapters against copies of the base")
        adapter_bytes = sum(reg.show(f"{p.name}@{p.version}").size for p in published.values())
        click.echo(f"    2 adapters in the registry    {_size(adapter_bytes)}")
        click.echo(f"    1 copy of the base            {_size(fp.total_bytes)}")
        click.echo(f"    2 fully fine-tuned copies     {_size(2 * fp.total_bytes)}")
        _say(f"""The registry stored no copy of the base: only its fingerprint and tensor shapes. Each
        adapter here is {100 * adapter_bytes / 2 / fp.total_bytes:.1f}% of a base copy. A LoRA grows with
        rank x width while the base grows with width squared, so on a real model the gap is far wider:
        a rank-8 LoRA on every linear layer of a 7B Llama is about 40 MB in fp16, 0.3% of its 13.5 GB.""")
    finally:
        reg.close()
