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

torch.set_num_threads(2)


def setup(frozen, size, cl):
    m = build_segmenter("efficientnet_lite0", pretrained=False)
    freeze_encoder(m, frozen)
    m.train()
    if cl:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-3)
    x = torch.randn(16, 3, size, size)
    y = (torch.rand(16, 1, size, size) > 0.95).float()
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return m, opt, x, y, frozen


loss = build_seg_loss()


def step(m, opt, x, y, frozen):
    t = time.perf_counter()
    if frozen:
        with torch.no_grad():
            f = m.forward_until(x, frozen)
        out = m.forward_from(f, frozen)
    else:
        out = m(x)
    l = loss(out, y)
    opt.zero_grad()
    l.backward()
    opt.step()
    return time.perf_counter() - t


cfgs = {
    "plain (all trained, 224, contiguous)": setup(0, 224, False),
    "default (2 stages frozen, 128 tiles, channels_last)": setup(2, 128, True),
    "2 frozen, 224, channels_last": setup(2, 224, True),
    "0 frozen, 128, channels_last": setup(0, 128, True),
}
times = {k: [] for k in cfgs}
for r in range(4):
    for k, c in cfgs.items():
        dt = step(*c)
        if r:
            times[k].append(dt)
for k, v in times.items():
    print(
        f"{k}: {16 / min(v):.2f} img/s (best of {len(v)}), median {16 / sorted(v)[len(v) // 2]:.2f}"
    )
