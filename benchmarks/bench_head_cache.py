"""Cost of a cached attach: how long recognising an unchanged model takes before the probe is
skipped, against a full fingerprint, on a ResNet-50-shaped model and on a LeViT look-alike whose
train() clears an attention-bias cache that eval forwards fill.

Per model, median over ``--repeats`` rounds (wall and process CPU time, milliseconds):
- ``key_and_get``: ``HEAD_CACHE.key`` + ``HEAD_CACHE.get`` on a cached, unchanged model (what
  the capture's discovery does on each attach);
- ``full_fingerprint``: ``model_fingerprint`` (what every attach paid before the fast plan);
- ``attach_alone``: attach, discover the head for ``x`` (from the cache), detach: the plugin's
  own work of a cached attach, without the forward, one attach after another;
- ``attach_alone_cold``: the same, each right after a 64 MiB write has evicted the CPU caches
  (as a CPU forward of a large model does: the state check then reads the model's objects from
  memory);
- ``attach_overhead``: ``with attach(model): model(x)`` minus ``model(x)`` alone (the whole
  plugin cost of a cached attach, hooks included), the median of the differences within
  interleaved rounds (robust to a shared machine's slow phases);
and, for LeViT, the probes run over ``--cycles`` rounds of ``train(); eval(); attach; forward``.
Where torchvision imports (the peers environment: ``make``'s ``.venv-peers``), also real
ResNet-50, Swin-T, ConvNeXt-T and EfficientNet-B0 at 224 px (random weights), all but the
attach overhead (a 224 px forward varies by more than the overhead), plus
``attach_alone_interleaved``: one attach of each model in turn, round by round.

Usage: python benchmarks/bench_head_cache.py [--repeats 200] [--device cpu] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import operator
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_io import interleaved_times, run_environment, write_report  # noqa: E402
from models import resnet50_like  # noqa: E402

import camplug  # noqa: E402
from camplug.discovery.cache import HEAD_CACHE, model_fingerprint  # noqa: E402
from camplug.discovery.heads import probing  # noqa: E402


def _test_models():  # noqa: ANN202
    """tests/models.py (the LeViT look-alike lives there, one copy)."""
    path = Path(__file__).resolve().parent.parent / "tests" / "models.py"
    spec = importlib.util.spec_from_file_location("camplug_test_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _timed(fn: Callable[[], object], repeats: int,
           before: Callable[[], object] | None = None) -> dict[str, float]:
    """Median wall and process-CPU milliseconds of ``fn`` over ``repeats`` calls (``before``,
    untimed, ahead of each)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu)}


def _paired_difference(fn: Callable[[], object], base: Callable[[], object],
                       repeats: int, device: torch.device) -> dict[str, float]:
    """Median over ``repeats`` interleaved rounds of ``fn``'s wall and CPU milliseconds minus
    ``base``'s in the same round."""
    wall, cpu = interleaved_times({"base": base, "fn": fn}, device, warmup=1, rounds=repeats)
    return {f"{clock}_ms": 1e3 * statistics.median(map(operator.sub, times["fn"], times["base"]))
            for clock, times in (("wall", wall), ("cpu", cpu))}


TORCHVISION_MODELS = ("resnet50", "swin_t", "convnext_tiny", "efficientnet_b0")


def _calls(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The calls timed for one model (after a first attach has cached its head)."""
    with camplug.attach(model), torch.no_grad():
        model(x)
    args = (x,)

    def key_and_get() -> None:
        key = HEAD_CACHE.key(model, args, {}, layer=None, output=None, single_sample=True)
        assert key is not None and HEAD_CACHE.get(model, key) is not None

    def attached() -> None:
        with camplug.attach(model), torch.no_grad():
            model(x)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def attach_alone() -> None:
        with camplug.attach(model) as capture:
            capture.discover(x)

    return {"key_and_get": key_and_get, "attach_alone": attach_alone, "attached": attached,
            "plain": plain, "full_fingerprint": lambda: model_fingerprint(model)}


def _sizes(model: torch.nn.Module) -> dict[str, int]:
    return {"modules": sum(1 for _ in model.modules()),
            "tensors": sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())}


def _evicting() -> Callable[[], object]:
    """A 64 MiB write, which evicts the CPU caches (as a CPU forward of a large model does)."""
    scratch = torch.zeros(16 * 2**20)
    return lambda: scratch.add_(1.0)


def _attach_timings(calls: dict[str, Callable[[], object]], repeats: int) -> dict:
    """The timings every model gets (the module docstring)."""
    return {
        "key_and_get": _timed(calls["key_and_get"], repeats),
        "full_fingerprint": _timed(calls["full_fingerprint"], max(repeats // 10, 3)),
        "attach_alone": _timed(calls["attach_alone"], repeats),
        "attach_alone_cold": _timed(calls["attach_alone"], max(repeats // 3, 3),
                                    before=_evicting()),
    }


def measure(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """The timings of the module docstring for one model."""
    calls = _calls(model, x)
    return {
        **_sizes(model),
        **_attach_timings(calls, repeats),
        "forward": _timed(calls["plain"], repeats),
        "attach_overhead": _paired_difference(calls["attached"], calls["plain"], repeats,
                                              x.device),
    }


def torchvision_rows(repeats: int, device: torch.device) -> dict[str, dict]:
    """On real torchvision models, if it imports: the timings of the module docstring but the
    attach overhead, the models' calls interleaved round by round (a slow phase of a shared
    machine falls on all of them alike)."""
    try:
        import torchvision
    except ImportError:
        return {}
    x = torch.randn(1, 3, 224, 224, device=device)
    models = {name: getattr(torchvision.models, name)().eval().to(device)
              for name in TORCHVISION_MODELS}
    calls = {name: _calls(model, x) for name, model in models.items()}
    rows = {name: {**_sizes(model), **_attach_timings(calls[name], repeats)}
            for name, model in models.items()}
    wall, cpu = interleaved_times({name: calls[name]["attach_alone"] for name in models}, device,
                                  warmup=1, rounds=repeats)
    for name in models:
        rows[name]["attach_alone_interleaved"] = {
            "wall_ms": 1e3 * statistics.median(wall[name]),
            "cpu_ms": 1e3 * statistics.median(cpu[name])}
    return {f"torchvision_{name}_224": row for name, row in rows.items()}


def levit_probes(model: torch.nn.Module, x: torch.Tensor, cycles: int) -> int:
    """Probes over ``cycles`` rounds of train(); eval(); attach; forward."""
    count = [0]

    def seen(module: torch.nn.Module, inputs: tuple) -> None:
        count[0] += probing()

    handle = model.register_forward_pre_hook(seen)
    try:
        for _ in range(cycles):
            model.train()
            model.eval()
            with camplug.attach(model), torch.no_grad():
                model(x)
    finally:
        handle.remove()
    return count[0]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    now = datetime.datetime.now(datetime.timezone.utc)
    tests = _test_models()
    resnet = resnet50_like().eval().to(device)
    levit = tests.build(next(c for c in tests.SUPPORTED if c.name == "levit")).to(device)
    image = torch.randn(1, 3, 32, 32, device=device)
    report = {
        **run_environment(device, now),
        "benchmark": "head_cache",
        "repeats": args.repeats,
        "resnet50_like_64": measure(resnet, torch.randn(1, 3, 64, 64, device=device),
                                     args.repeats),
        "levit_like_32": measure(levit, image, args.repeats),
    }
    HEAD_CACHE.clear()
    report["levit_like_32"]["probes_over_cycles"] = {
        "cycles": args.cycles, "probes": levit_probes(levit, image, args.cycles)}
    report.update(torchvision_rows(args.repeats, device))
    path = write_report(report, "head_cache", now, args.out)
    for name, row in report.items():
        if not isinstance(row, dict) or "attach_alone" not in row:
            continue
        overhead = (f", attach overhead {row['attach_overhead']['cpu_ms']:.3f} ms CPU"
                    if "attach_overhead" in row else "")
        print(f"{name}: key+get {row['key_and_get']['cpu_ms']:.3f} ms CPU "
              f"({row['key_and_get']['wall_ms']:.3f} wall), full fingerprint "
              f"{row['full_fingerprint']['cpu_ms']:.2f} ms CPU, attach alone "
              f"{row['attach_alone']['cpu_ms']:.3f} ms CPU (cold "
              f"{row['attach_alone_cold']['cpu_ms']:.3f}){overhead}")
    print(f"levit probes over {args.cycles} cycles: "
          f"{report['levit_like_32']['probes_over_cycles']['probes']}; report: {path}")
    return path


if __name__ == "__main__":
    main()
