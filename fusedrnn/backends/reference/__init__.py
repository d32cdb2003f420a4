"""Pure-PyTorch backend: the CPU fallback and the oracle every other backend is tested against.

One call runs one layer in one direction over a padded, time-major sequence; the input
projection of all steps is one matrix product, each step one ``addmm`` into a preallocated
buffer plus the cell's pointwise work, and the backward (a hand-written backpropagation
through time) computes gate gradients step by step, then the weight gradients as one
product over all steps.

Shapes: T time, B batch, I input, H hidden, P = proj_size or H (size of h), G = gates * H.
Forward returns ``(y, h_n, c_n, ws_a, ws_b)``:

========  ==========  ===========================================================
tensor    shape       content
========  ==========  ===========================================================
y         (T, B, P)   h after every step; zero where ``t >= lengths[b]``
h_n       (B, P)      h after each sequence's own last step
c_n       (B, H)      LSTM cell state after the last step; ``(0,)`` for other cells
ws_a      (T, B, G)   LSTM/GRU: activated gates (i,f,g,o / r,z,n); RNN: ``(0,)``
ws_b      (T, B, H)   LSTM: c after every step (held past a sequence's end);
                      GRU: ``W_hn h + b_hn`` of every step; RNN: ``(0,)``
========  ==========  ===========================================================

A step ``t`` of sequence ``b`` is active when ``t < lengths[b]``; an inactive step leaves
the state unchanged, so ``h_n`` is the state at the sequence's own last step in either
direction. Backward returns ``(grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh,
grad_w_hr, grad_h0, grad_c0)`` with ``(0,)`` for what does not exist.
"""

from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_relu_backward, rnn_relu_forward, rnn_tanh_backward, rnn_tanh_forward

FORWARD = {
    "lstm": lstm_forward,
    "gru": gru_forward,
    "rnn_tanh": rnn_tanh_forward,
    "rnn_relu": rnn_relu_forward,
}
BACKWARD = {
    "lstm": lstm_backward,
    "gru": gru_backward,
    "rnn_tanh": rnn_tanh_backward,
    "rnn_relu": rnn_relu_backward,
}
