"""What torch.compile is told about fusedrnn's own helpers."""


def constant_result(fn):
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` marks a function: Dynamo
    runs it while tracing and keeps its result as a constant of the graph, instead of
    tracing it. The attribute is what that function sets; calling it would import
    torch._dynamo (and Triton) with fusedrnn. For facts fixed for the process (an
    extension's status, the CPU's oneDNN dtypes) whose code Dynamo cannot trace or would
    guard on state that the call itself changes."""
    fn._dynamo_marked_constant = True
    return fn
