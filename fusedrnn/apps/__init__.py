"""Applications of :mod:`fusedrnn.models`, each behind a ``fusedrnn`` subcommand.

- ``fusedrnn sentiment train|evaluate|predict|compare``: IMDB sentiment classification
  (:mod:`.imdb` data, :mod:`.text` tokenizer and batches, :mod:`.sentiment` training and
  checkpoints, :mod:`.sentiment_cli` command line).
- ``fusedrnn forecast``: CO2 or sunspots with a stacked LSTM against naive baselines
  (:mod:`.forecast`).
- ``fusedrnn seq2seq``: an attention encoder-decoder on a synthetic transduction task
  (:mod:`.seq2seq`).
- :mod:`.common`: seeding, devices and threads, progress bars, checkpoints, metrics,
  markdown tables and plots.
- :mod:`.distributed`: ``sentiment train`` under ``torchrun`` (DistributedDataParallel,
  gloo on the CPU, NCCL on GPUs; batches sharded by rank, rank 0 writes).

Optional packages: ``tokenizers`` (sentiment), ``tqdm`` (progress bars: every command but
``sentiment --no-progress``), ``statsmodels`` (forecast), ``matplotlib`` (every plot). Each
is imported only when a command needs it, and a command names what it lacks before any
work (:func:`.common.require`).
"""
