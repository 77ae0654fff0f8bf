"""Segmentation training speed: images per second of one training step, four set-ups.

The plain reference (everything trained, whole 224-px images, contiguous memory) against the
default (first two encoder stages frozen and run without autograd, 128-px tiles,
channels-last) and the two changes alone. Batches of 16 random images, random init (speed
does not depend on the weights), 2 threads, the set-ups interleaved round by round so a
shared machine's load hits them alike; the first round is warm-up.

Run:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/segment_speed.py
"""

import time

import torch

from fracturekit.models import build_seg_loss, build_segmenter, freeze_encoder

BATCH = 16
LOSS = build_seg_loss()


def setup(frozen: int, size: int, channels_last: bool) -> tuple:
    model = build_segmenter("efficientnet_lite0", pretrained=False)
    freeze_encoder(model, frozen)
    model.train()
    x = torch.randn(BATCH, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(BATCH, 1, size, size) > 0.95).float()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    return model, opt, x, y, frozen


def step(model, opt, x, y, frozen: int) -> float:
    t0 = time.perf_counter()
    if frozen:
        with torch.no_grad():
            feats = model.forward_until(x, frozen)
        out = model.forward_from(feats, frozen)
    else:
        out = model(x)
    loss = LOSS(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main(rounds: int = 4) -> None:
    torch.set_num_threads(2)
    setups = {
        "plain (all trained, 224, contiguous)": setup(0, 224, False),
        "default (2 stages frozen, 128 tiles, channels_last)": setup(2, 128, True),
        "2 frozen, 224, channels_last": setup(2, 224, True),
        "0 frozen, 128, channels_last": setup(0, 128, True),
    }
    times: dict[str, list[float]] = {k: [] for k in setups}
    for r in range(rounds):
        for name, args in setups.items():
            dt = step(*args)
            if r:
                times[name].append(dt)
    for name, v in times.items():
        best, median = BATCH / min(v), BATCH / sorted(v)[len(v) // 2]
        print(f"{name}: {best:.2f} img/s (best of {len(v)}), median {median:.2f}")


if __name__ == "__main__":
    main()
