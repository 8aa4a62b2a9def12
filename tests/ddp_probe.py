"""Started once per process by the launcher tests: join the process group, all-reduce, report.

    python -m ddp_probe OUT_DIR   (under torchrun; reads RANK/WORLD_SIZE/MASTER_* like tbkin.train.loop)
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tbkin.train.loop import cleanup_distributed, setup_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    ctx = setup_distributed("cpu")
    value = torch.tensor([float(ctx.rank + 1)])
    if ctx.distributed:
        dist.all_reduce(value)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({
        "rank": ctx.rank, "world_size": ctx.world_size, "local_rank": ctx.local_rank,
        "sum": value.item(), "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
    }))
    cleanup_distributed()
