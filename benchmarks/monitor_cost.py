"""What `--mlet-log-freq` costs: the TensorBoard monitor against plain MLET training.

Patched DLRM's ``DLRM_Net`` on the bench architecture (26 Criteo-like tables,
d=16, k=256, batch 128, SGD) trains in this process, once with the monitor
logging every ``--freq`` steps and once without, interleaved. Reported: the
end-to-end ratio, and the two parts measured directly (the per-step index
counting, and one log of all tables) with the cost they imply at ``--freq``.

    python benchmarks/monitor_cost.py [--freq 1024] [--steps 2048]
"""

import argparse
import shutil
import statistics
import tempfile
import time

import torch

from common import bench_batches, bench_model, criteo_rows, dlrm_copies, import_script, machine_lines, md_table, save


class NullWriter:
    def add_scalar(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dlrm-mlet-bench-")
    _, patched_path = dlrm_copies(work)
    dlrm = import_script(patched_path, "patched_dlrm")
    from dlrm_mlet import dlrm_glue
    from dlrm_mlet.dlrm.monitor import Monitor

    rows = criteo_rows(0.01)
    dlrm_glue.use_config(dlrm_glue.Config(hidden_dim=256))
    model = bench_model(dlrm, rows, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = bench_batches(rows)

    def train(steps, monitor):
        start = time.perf_counter()
        for step in range(1, steps + 1):
            dense, offsets, indices, target = batches[step % len(batches)]
            loss = model.loss_fn(model(dense, offsets, indices), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if monitor is not None:
                monitor.after_step(model, NullWriter(), step)
        return (time.perf_counter() - start) / steps * 1000

    train(50, None)
    plain, logged = [], []
    for _ in range(args.reps):
        plain.append(train(args.steps, None))
        logged.append(train(args.steps, Monitor(args.freq)))
    counting = Monitor(10**9)  # counts indices every step, never logs
    counting_ms = statistics.median(train(args.steps // 4, counting) for _ in range(args.reps))
    plain_short = statistics.median(train(args.steps // 4, None) for _ in range(args.reps))
    logger = Monitor(1)
    logger.attach(model)
    log_seconds = []
    for _ in range(5):
        start = time.perf_counter()
        logger.log(model, NullWriter(), 1)
        log_seconds.append(time.perf_counter() - start)
    step_ms = statistics.median(plain)
    result = {
        "freq": args.freq, "steps": args.steps, "reps": args.reps,
        "step_ms_plain": step_ms, "step_ms_with_monitor": statistics.median(logged),
        "end_to_end_ratio": statistics.median(logged) / step_ms,
        "counting_ms_per_step": max(0.0, counting_ms - plain_short),
        "log_seconds": statistics.median(log_seconds),
    }
    result["implied_cost_fraction"] = (result["counting_ms_per_step"]
                                       + 1000 * result["log_seconds"] / args.freq) / step_ms
    for key, value in result.items():
        print(f"{key:<24} {value:.4f}" if isinstance(value, float) else f"{key:<24} {value}")
    save("monitor_cost", {**result}, render)
    shutil.rmtree(work, ignore_errors=True)


def render(data):
    lines = ["## TensorBoard monitor cost (`benchmarks/monitor_cost.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Patched DLRM's `DLRM_Net`, MLET d=16 k=256, batch 128, SGD; {data['steps']} steps per run, "
              f"{data['reps']} interleaved repetitions with and without the monitor at `--mlet-log-freq "
              f"{data['freq']}` (the default).", ""]
    lines += md_table(["ms/step without", "ms/step with", "end-to-end ratio", "index counting ms/step",
                       "one log of all tables s", "implied cost"],
                      [[f"{data['step_ms_plain']:.2f}", f"{data['step_ms_with_monitor']:.2f}",
                        f"{data['end_to_end_ratio']:.3f}", f"{data['counting_ms_per_step']:.3f}",
                        f"{data['log_seconds']:.3f}", f"{100 * data['implied_cost_fraction']:.2f} %"]])
    return lines + ["", "The implied cost (counting per step plus one log spread over the logging interval, over "
                    "the plain step time) is the figure to read; the end-to-end ratio of two separate runs "
                    "also carries their run-to-run noise."]


if __name__ == "__main__":
    main()
