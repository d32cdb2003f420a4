"""GRU training steps (forward + backward of the output's sum): fusedrnn and torch.nn in
turn in one process; prints the minimum ms of each over rounds."""
import time, torch, fusedrnn
from torch import nn
torch.manual_seed(0)
def case(name, B, T, H, packed, bidirectional, cell=False):
    if cell:
        a, b = nn.GRUCell(H, H), fusedrnn.GRUCell(H, H)
    else:
        a, b = nn.GRU(H, H, bidirectional=bidirectional), fusedrnn.GRU(H, H, bidirectional=bidirectional)
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, B, H)
    lengths = torch.randint(T // 2, T + 1, (B,)); lengths[0] = T
    def run(m):
        if cell:
            h = torch.zeros(B, H); total = 0
            for t in range(T):
                h = m(x[t], h); total = total + h.sum()
            total.backward()
        else:
            inp = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
            out, h = m(inp)
            (out.data if packed else out).sum().backward()
        m.zero_grad(set_to_none=True)
    best = {"fused": 1e9, "torch": 1e9}
    for r in range(9):
        for label, m in (("fused", b), ("torch", a)):
            t0 = time.perf_counter(); run(m); dt = (time.perf_counter() - t0) * 1e3
            if r >= 2: best[label] = min(best[label], dt)
    print(f"{name}: {best['fused']:.4f} {best['torch']:.4f}", flush=True)
case("GRU bi packed B32 T100 H256 training", 32, 100, 256, True, True)
case("GRU bi B32 T100 H256 training", 32, 100, 256, False, True)
case("GRU packed B8 T200 H128 training", 8, 200, 128, True, False)
case("GRUCell B1 H256 x20 training", 1, 20, 256, False, False, cell=True)
case("GRUCell B32 H256 x20 training", 32, 20, 256, False, False, cell=True)
