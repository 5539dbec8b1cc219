"""trainkit's CUDA paths, run once on a GPU machine: ``bench/gpu_check.sh OUTDIR`` starts
this with hydra-core importable and trainkit on the path.

    python bench/gpu_check.py OUTDIR [--budget-s 500] [--rehearse] [--only STEP,...]

Each step is a command a user would type (or the benchmark, or the ``gpu``-marked tests),
run in its own process with a time limit, in order of what matters most when time runs
short. A step passes on its exit status and the check after it (a learned model, the same
predictions on the GPU and the CPU, one error line and no run directory where a command
must fail). Steps that would start after ``--budget-s`` are skipped, and say so.

- train with ``trainer.device=cuda`` in bf16 with channels_last and cuDNN autotuning (its
  checkpoint serves the later steps);
- ``bench/bench_gpu.py`` with every speed switch on (bf16, channels_last, compile off and
  on, ``data.on_device``), on a quiet machine;
- the ``gpu``-marked tests start in the background (``gpu_tests.log``), beside:
- train with fp16 and the grad scaler, ``trainer.compile=true``,
  ``data.on_device=true``, the DataLoader with pinned memory
  and workers, one process through torchrun;
- eval, predict (``device=cuda`` against ``device=cpu``), export to ONNX and torch.export
  from the GPU run, and predict with the ONNX file;
- a run stopped by SIGTERM after its first checkpoint, then resumed to the end;
- mistakes that must end in one line: ``trainer.devices=2`` on one GPU, and a batch that
  does not fit in the GPU's memory;
- lr-find on the GPU;
- the gpu tests' result (waited for);
- the benchmark with each switch turned off in turn (the DataLoader, fp32, contiguous).

OUTDIR gets ``gpu_check.log`` (every command and all it printed), ``gpu_check.json`` (each
step: status, seconds, figures) and the benchmark's JSON files. ``--rehearse`` runs on the
CPU what a CPU can (small, no compile, no fp16), to try the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    command: list[str]
    cap_s: float  # its time limit, when the budget leaves that much
    status: int = 0  # the exit status it must end with
    check: Callable[[subprocess.CompletedProcess], dict] | None = None  # figures; raises
    gpu_only: bool = False  # skipped in a rehearsal
    min_s: float = 20  # not started with less time left
    max_s: float | None = None  # fails when it takes longer (a process that hangs at exit)
    run: Callable[[Step, float], subprocess.CompletedProcess] | None = None  # how, if special
    needs: str = ""  # a step whose files it uses


@dataclass
class Check:
    out: Path
    work: Path
    rehearse: bool
    deadline: float
    log: object = None
    results: list[dict] = field(default_factory=list)
    tests: subprocess.Popen | None = None  # the gpu tests, running beside the CLI steps
    tests_log: object = None

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"

    def say(self, text: str) -> None:
        print(text, flush=True)
        print(text, file=self.log, flush=True)

    def write_json(self, environment: dict) -> None:
        passed = sum(r["ok"] is True for r in self.results)
        failed = sum(r["ok"] is False for r in self.results)
        report = {
            "rehearsal": self.rehearse,
            "environment": environment,
            "passed": passed,
            "failed": failed,
            "skipped": len(self.results) - passed - failed,
            "steps": self.results,
        }
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")


class CheckFailed(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


# --- the steps -------------------------------------------------------------------------------


def trainkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainkit", *args]


def steps(check: Check) -> list[Step]:
    work, device = check.work, check.device
    small = check.rehearse
    data = ["data=synthetic", "data.shape=[3,16,16]", f"data.num_samples={400 if small else 4000}"]
    base = [*data, "model=resnet_cifar", "logger.progress_bar=false", f"trainer.device={device}"]
    fast = ["trainer.precision=bf16", "trainer.channels_last=true"]

    def train(name: str, *overrides: str, epochs: int = 3) -> list[str]:
        run_dir = f"hydra.run.dir={work / name}"
        return trainkit("train", *base, f"trainer.max_epochs={epochs}", *overrides, run_dir)

    def learned(name: str, at_least: float = 0.5) -> Callable[[subprocess.CompletedProcess], dict]:
        """The run finished, its train loss fell, each epoch is logged once, and its test
        accuracy is above ``at_least`` (10 classes: chance is 0.1)."""

        def check_run(result) -> dict:
            summary = json.loads((work / name / "summary.json").read_text())
            lines = (work / name / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            epochs = [record["epoch"] for record in records]
            expect(epochs == sorted(set(epochs)), f"epochs logged: {epochs}")
            losses = [record["train/loss"] for record in records]
            expect(losses[-1] < losses[0], f"train/loss went from {losses[0]} to {losses[-1]}")
            acc = summary["test/acc"]
            expect(acc > at_least, f"test/acc {acc:.3f} <= {at_least}")
            keys = ("test/acc", "test/loss", "train_time_s", "best_epoch")
            return {"epochs": len(epochs)} | {key: summary.get(key) for key in keys}

        return check_run

    best = work / "bf16" / "checkpoints" / "best.pt"
    inputs = work / "inputs.npy"
    bench = [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--json"]
    bench_test = REPO / "tests" / "test_bench_gpu.py"  # its GPU test: the bench steps, bigger
    if small:
        bench += ["--device", "cpu", "--batches", "2", "--batch-size", "5", "--compile", "off"]

    def bench_step(name: str, cap_s: float, rounds: int, *options: str) -> Step:
        out = check.out / f"{name}.json"

        def run_bench(step: Step, limit: float) -> subprocess.CompletedProcess:
            budget = max(10.0, limit - 30)  # its own start and data set inside the limit
            command = [*step.command, "--rounds", str(1 if small else rounds)]
            command += ["--budget-s", f"{budget:.0f}", "--out", str(out)]
            return execute(check, Step(step.name, command, limit), limit)

        def figures(result) -> dict:
            summary = json.loads(out.read_text())
            expect(summary["complete"], "the benchmark did not finish")
            return {
                "trainkit_data": summary["trainkit_data"],
                "precision": summary["precision"],
                "channels_last": summary["channels_last"],
                **{
                    key: {
                        "trainkit_images_per_s": s["trainkit_images_per_s"],
                        "plain_images_per_s": s["plain_images_per_s"],
                        "trainkit_vs_plain": s["trainkit_vs_plain"],
                        "rounds": s["rounds_done"],
                    }
                    for key, s in summary["settings"].items()
                },
            }

        return Step(name, [*bench, *options], cap_s, check=figures, run=run_bench, min_s=40)

    return [
        Step(
            "environment",
            [sys.executable, "-c", ENVIRONMENT],
            60,
            check=lambda result: json.loads(result.stdout),
            min_s=0,
        ),
        Step(
            "train_bf16",
            train("bf16", *fast, "trainer.cudnn_benchmark=true"),
            120,
            check=learned("bf16"),
        ),
        bench_step("bench_gpu", 200, 9, "--trainkit-data", "device"),
        Step(
            "gpu_tests_start",
            [
                *PYTEST,
                *gpu_test_files(),
                "--deselect",
                f"{bench_test}::test_on_a_gpu_both_settings_run",
            ],
            10,
            run=lambda step, limit: start_tests(check, step),
            min_s=60,
        ),
        Step(
            "eval",
            trainkit("eval", f"checkpoint={best}", f"output_dir={work / 'eval'}"),
            60,
            check=lambda result: same_test_accuracy(work),
            needs="train_bf16",
        ),
        Step(
            "predict_gpu_and_cpu",
            [sys.executable, "-c", MAKE_INPUTS, str(inputs)],
            90,
            run=lambda step, limit: predict_both(check, step, limit, best, inputs),
            check=lambda result: agreeing_predictions(work, "cpu", device),
            needs="train_bf16",
        ),
        Step(
            "export_onnx_and_predict_with_it",
            trainkit("export", f"checkpoint={best}", "format=onnx", f"output={work / 'm.onnx'}"),
            90,
            run=lambda step, limit: export_then_predict(check, step, limit, inputs),
            check=lambda result: agreeing_predictions(work, "cpu", "onnx"),
            needs="train_bf16",
        ),
        Step(
            "export_torch_export",
            trainkit(
                "export", f"checkpoint={best}", "format=torch_export", f"output={work / 'm.pt2'}"
            ),
            90,
            needs="train_bf16",
        ),
        Step(
            "train_fp16",
            train("fp16", "trainer.precision=fp16", "trainer.channels_last=true"),
            120,
            check=learned("fp16"),
            gpu_only=True,
        ),
        Step(
            "train_compile",
            train("compile", *fast, "trainer.compile=true"),
            240,
            check=learned("compile"),
            gpu_only=True,
            min_s=60,
        ),
        Step(
            "train_on_device",
            # Crops and flips on the GPU: the gpu tests (random crops of 16x16 synthetic
            # images learn too slowly for a three-epoch check).
            train("on_device", *fast, "data.on_device=true"),
            120,
            check=learned("on_device"),
        ),
        Step(
            "train_pinned_loader",
            train(
                "loader",
                *fast,
                "data.on_device=false",
                "data.pin_memory=true",
                "data.num_workers=4",
            ),  # fmt: skip
            120,
            check=learned("loader"),
            gpu_only=True,
            # Its persistent workers, left to the process's exit, held torch 2.11 there for
            # 5 s each (about a minute; the other runs take 15-25 s).
            max_s=50,
        ),
        Step(
            "torchrun_one_process",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "1",
                *train("torchrun", *fast)[1:],
            ],  # fmt: skip
            120,
            check=learned("torchrun"),
        ),
        Step(
            "resume_after_sigterm",
            train("resume", *fast, "trainer.checkpoint_every=5", epochs=6),
            180,
            run=lambda step, limit: stop_then_resume(check, step, limit, work / "resume"),
            check=learned("resume"),
            min_s=40,
        ),
        Step(
            "two_devices_on_one_gpu_is_one_line",
            train("two", "trainer.devices=2"),
            60,
            status=2,
            check=lambda result: one_line(result, "trainer.devices=2 but 1 GPU(s)", work / "two"),
            gpu_only=True,
        ),
        Step(
            "out_of_memory_is_one_line",
            trainkit(
                "train",
                "data=synthetic",
                "data.shape=[3,128,128]",
                "data.num_samples=4000",
                "data.batch_size=3000",
                "model=resnet18",
                "model.stem=cifar",
                "trainer.device=cuda",
                "trainer.max_epochs=1",
                "logger.progress_bar=false",
                f"hydra.run.dir={work / 'oom'}",
            ),  # fmt: skip
            120,
            status=2,
            check=lambda result: one_line(result, "out of memory on the GPU", work / "oom"),
            gpu_only=True,
        ),
        Step(
            "lr_find",
            trainkit("lr-find", *base, *fast, "steps=60", f"output={work / 'lr_find.png'}"),
            90,
            check=lambda result: lr_suggested(result),
        ),
        Step(
            "gpu_tests",
            [],
            600,
            run=lambda step, limit: wait_for_tests(check, limit),
            check=lambda result: tests_passed(result),
            needs="gpu_tests_start",
            min_s=0,
        ),
        bench_step("bench_gpu_loader", 70, 5, "--trainkit-data", "loader", "--compile", "off"),
        bench_step("bench_gpu_fp32", 60, 3, "--precision", "32", "--compile", "off"),
        bench_step("bench_gpu_contiguous", 60, 3, "--channels-last", "off", "--compile", "off"),
    ]


# One process (the tests share the GPU), none of the suite's options, quiet, skips said.
PYTEST = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts="]
PYTEST += ["-q", "-rs"]


def gpu_test_files() -> list[str]:
    """The test files with ``gpu``-marked tests: only they are collected, so that the
    others' imports (optuna, for the sweeps) need not be on the GPU machine."""
    files = sorted((REPO / "tests").glob("test_*.py"))
    return [str(path) for path in files if "pytest.mark.gpu" in path.read_text()]


ENVIRONMENT = """
import json, platform, shutil, subprocess, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpus=torch.cuda.device_count(),
                memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                cudnn=torch.backends.cudnn.version(),
                nccl=".".join(map(str, torch.cuda.nccl.version())))
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    info["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
print(json.dumps(info))
"""

MAKE_INPUTS = """
import sys, numpy as np
rng = np.random.default_rng(0)
np.save(sys.argv[1], rng.random((64, 3, 16, 16), dtype=np.float32))
"""


# --- checks ----------------------------------------------------------------------------------


def same_test_accuracy(work: Path) -> dict:
    trained = json.loads((work / "bf16" / "summary.json").read_text())["test/acc"]
    evaluated = json.loads((work / "eval" / "summary.json").read_text())["test/acc"]
    expect(abs(trained - evaluated) < 1e-6, f"eval's test/acc {evaluated} != the run's {trained}")
    return {"test/acc": evaluated}


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def agreeing_predictions(work: Path, a: str, b: str) -> dict:
    first, second = (
        read_predictions(work / f"pred_{a}.csv"),
        read_predictions(work / f"pred_{b}.csv"),
    )
    expect(len(first) == len(second) == 64, f"{len(first)} and {len(second)} rows, not 64")
    pairs = list(zip(first, second, strict=True))
    same = sum(x["prediction"] == y["prediction"] for x, y in pairs)
    gap = max(abs(float(x["probability"]) - float(y["probability"])) for x, y in pairs)
    expect(
        same >= 63 and gap < 1e-2, f"{a} and {b}: {same}/64 alike, probabilities {gap:.2e} apart"
    )
    return {"same_prediction": f"{same}/64", "largest_probability_difference": gap}


def one_line(result: subprocess.CompletedProcess, words: str, run_dir: Path) -> dict:
    lines = result.stderr.strip().splitlines()
    expect("Traceback" not in result.stderr, "a traceback")
    expect(bool(lines) and lines[-1].startswith("trainkit: error: "), "no error line at the end")
    expect(words in lines[-1], f"the error line lacks {words!r}")
    errors = [line for line in lines if line.startswith("trainkit: error")]
    expect(len(errors) == 1, f"{len(errors)} error lines")
    expect(not run_dir.exists(), f"{run_dir} was left behind")
    return {"line": lines[-1]}


def lr_suggested(result: subprocess.CompletedProcess) -> dict:
    found = [line for line in result.stdout.splitlines() if "optimizer.lr=" in line]
    expect(bool(found), "no suggested optimizer.lr")
    return {"suggestion": found[0].strip()}


def tests_passed(result: subprocess.CompletedProcess) -> dict:
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return {"summary": tail}


# --- steps that run more than one command ------------------------------------------------------


def predict_both(check: Check, step: Step, limit: float, best: Path, inputs: Path):
    """Make the inputs, then predict them on the CPU and on the GPU."""
    started = time.monotonic()
    result = execute(check, step, limit)
    for device in dict.fromkeys(("cpu", check.device)):  # once in a rehearsal
        if result.returncode:
            break
        output = check.work / f"pred_{device}.csv"
        command = trainkit(
            "predict", f"checkpoint={best}", f"input={inputs}", f"output={output}",
            f"device={device}",
        )  # fmt: skip
        left = limit - (time.monotonic() - started)
        result = execute(check, Step(step.name, command, left), left)
    return result


def export_then_predict(check: Check, step: Step, limit: float, inputs: Path):
    started = time.monotonic()
    result = execute(check, step, limit)
    if result.returncode:
        return result
    output = check.work / "pred_onnx.csv"
    command = trainkit(
        "predict", f"model={check.work / 'm.onnx'}", f"input={inputs}", f"output={output}"
    )
    return execute(check, Step(step.name, command, limit), limit - (time.monotonic() - started))


def stop_then_resume(check: Check, step: Step, limit: float, run_dir: Path):
    """Train; after its first checkpoint, SIGTERM (it saves and stops); then resume."""
    started = time.monotonic()
    check.say(f"$ {' '.join(step.command)}   (SIGTERM after the first checkpoint)")
    process = subprocess.Popen(
        step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = run_dir / "checkpoints" / "last.pt"
    while process.poll() is None and not last.exists() and time.monotonic() - started < limit / 2:
        time.sleep(0.2)
    time.sleep(1.0)  # into the next steps
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=max(5.0, limit / 2))
    check.say(output.rstrip())
    check.say(f"[exit status {process.returncode}]")
    expect(not (run_dir / "summary.json").exists(), "the run ended before SIGTERM reached it")
    expect(process.returncode == 128 + signal.SIGTERM, "SIGTERM: not exit status 143")
    expect("checkpoint saved" in output, "SIGTERM: no checkpoint saved")
    command = trainkit("train", f"resume={run_dir}")
    return execute(check, Step(step.name, command, limit), limit - (time.monotonic() - started))


def start_tests(check: Check, step: Step) -> subprocess.CompletedProcess:
    """The gpu tests in the background, beside the CLI steps (the GPU has room for both;
    the benchmarks run before and after, on a quiet machine)."""
    check.say(f"$ {' '.join(step.command)}   (in the background: gpu_tests.log)")
    log = open(check.out / "gpu_tests.log", "w")  # noqa: SIM115 (closed by wait_for_tests)
    check.tests = subprocess.Popen(
        step.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, text=True
    )
    check.tests_log = log
    return subprocess.CompletedProcess(step.command, 0, "", "")


def wait_for_tests(check: Check, limit: float) -> subprocess.CompletedProcess:
    if check.tests is None:
        raise CheckFailed("the tests were not started")
    try:
        status = check.tests.wait(timeout=max(1.0, limit))
    except subprocess.TimeoutExpired:
        check.tests.kill()
        status = 124
    check.tests_log.close()
    output = (check.out / "gpu_tests.log").read_text()
    check.say(output.rstrip())
    check.say(f"[exit status {status}]")
    return subprocess.CompletedProcess([], status, output, "")


# --- running ----------------------------------------------------------------------------------


def execute(check: Check, step: Step, limit: float) -> subprocess.CompletedProcess:
    check.say(f"$ {' '.join(step.command)}")
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    try:
        result = subprocess.run(
            step.command,
            capture_output=True,
            text=True,
            timeout=max(1.0, limit),
            cwd=check.work,
            env=env,
        )
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout or ""
        err = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr or ""
        result = subprocess.CompletedProcess(
            step.command, 124, out, err + f"\n[timed out after {limit:.0f} s]"
        )
    for text in (result.stdout, result.stderr):
        if text.strip():
            check.say(text.rstrip())
    check.say(f"[exit status {result.returncode}]")
    return result


def run_step(check: Check, step: Step) -> dict:
    record = {"name": step.name, "command": " ".join(step.command), "ok": None}
    left = check.deadline - time.monotonic()
    if check.rehearse and step.gpu_only:
        record["note"] = "skipped: needs a GPU (rehearsal)"
        return record
    if left < step.min_s:
        record["note"] = f"skipped: {left:.0f} s of the budget left"
        return record
    limit = min(step.cap_s, left)
    check.say(f"\n=== {step.name} (at most {limit:.0f} s)")
    started = time.monotonic()
    try:
        result = (step.run or (lambda s, t: execute(check, s, t)))(step, limit)
        record["status"] = result.returncode
        expect(
            result.returncode == step.status, f"exit status {result.returncode}, not {step.status}"
        )
        if step.check:
            record["figures"] = step.check(result)
        took = time.monotonic() - started
        expect(step.max_s is None or took <= step.max_s, f"took {took:.0f} s, not {step.max_s}")
        record["ok"] = True
    except (CheckFailed, OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        record["ok"] = False
        record["note"] = (
            f"{type(error).__name__}: {error}" if not isinstance(error, CheckFailed) else str(error)
        )
    record["seconds"] = round(time.monotonic() - started, 1)
    said = "passed" if record["ok"] else f"FAILED: {record['note']}"
    check.say(f"=== {step.name}: {said} ({record['seconds']} s)")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--budget-s", type=float, default=500, help="seconds in all (default 500)")
    parser.add_argument("--rehearse", action="store_true", help="on the CPU, small")
    parser.add_argument("--only", help="these steps (and those they need), comma-separated")
    args = parser.parse_args(argv)
    out = Path(args.outdir).resolve()
    # The runs' directories: made when the steps start, after the checks below.
    work = Path(tempfile.gettempdir()) / f"gpu_check_{os.getpid()}_{time.time_ns()}"
    check = Check(out, work, args.rehearse, time.monotonic() + args.budget_s)
    if not args.rehearse:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA GPU is visible; use --rehearse to try it on the CPU",
                file=sys.stderr,
            )
            return 2
    environment: dict = {}
    planned = steps(check)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {step.name for step in planned}
        if unknown:
            names = ", ".join(step.name for step in planned)
            print(
                f"gpu_check: no step {', '.join(sorted(unknown))}; steps: {names}", file=sys.stderr
            )
            return 2
        wanted |= {"environment"} | {step.needs for step in planned if step.name in wanted}
        planned = [step for step in planned if step.name in wanted]
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir()
    with open(out / "gpu_check.log", "w") as check.log:
        for step in planned:
            record = run_step(check, step)
            if step.name == "environment":
                environment = record.get("figures", {})
            check.results.append(record)
            check.write_json(environment)
        if check.tests is not None and check.tests.poll() is None:  # never waited for
            check.tests.kill()
        check.say("\n" + summary_table(check.results))
    return 0 if all(r["ok"] is not False for r in check.results) else 1


def summary_table(results: list[dict]) -> str:
    rows = ["| step | result | seconds |", "| --- | --- | ---: |"]
    for r in results:
        notes = {True: "passed", False: f"FAILED: {r.get('note', '')}", None: r.get("note")}
        said = notes[r["ok"]]
        rows.append(f"| {r['name']} | {said} | {r.get('seconds', '')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
