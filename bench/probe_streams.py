"""Temporary probe: do two engine calls on two CUDA streams overlap (Adam vs matmuls)?"""
import sys, threading, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch, bench_mine
from analysis.engine import estimate_mi_batched
from analysis.mi import MIOptions
args = bench_mine.parse_args(["--epochs", "20"])
xs, ys, _ = bench_mine.synthetic_features(args, args.device)
opts = MIOptions(epochs=20, device="cuda")
half = len(xs) // 2
parts = [(xs[:half], ys[:half]), (xs[half:], ys[half:])]
for precision in ("float32", "tf32"):
    run = lambda p: estimate_mi_batched(p[0], p[1], options=opts, progress=False, precision=precision,
                                        memory_budget_bytes=30 * 2 ** 30)
    run((xs[:24], ys[:24]))
    torch.cuda.synchronize(); t = time.perf_counter()
    for p in parts: run(p)
    torch.cuda.synchronize(); seq = time.perf_counter() - t
    streams = [torch.cuda.Stream() for _ in parts]
    def work(p, s):
        with torch.cuda.stream(s): run(p)
    threads = [threading.Thread(target=work, args=(p, s)) for p, s in zip(parts, streams)]
    torch.cuda.synchronize(); t = time.perf_counter()
    for th in threads: th.start()
    for th in threads: th.join()
    torch.cuda.synchronize(); par = time.perf_counter() - t
    print(f"probe {precision}: 20 epochs, two halves sequential {seq:.2f} s, on two streams {par:.2f} s", flush=True)
