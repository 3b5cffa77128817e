"""gradcheck: compare backward with float64 central finite differences."""
import numpy as np


class GradcheckError(RuntimeError):
    """Raised by gradcheck when analytical and numerical gradients differ."""


def _outputs_tuple(out):
    from .._tensor import Tensor
    if isinstance(out, Tensor):
        return (out,)
    return tuple(o for o in out if isinstance(o, Tensor))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True,
              nondet_tol=0.0):
    """Check ``fn``'s backward against finite differences for every input requiring grad.

    ``inputs`` is a tensor or tuple of tensors/values; tensors that require grad
    should be float64 (others are cast, with a loss of precision warning in the report).
    Returns True, or raises GradcheckError naming the worst element (or returns False
    with ``raise_exception=False``).
    """
    from .._tensor import Tensor
    from .grad_mode import no_grad
    from . import grad as autograd_grad
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    diff_idx = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not diff_idx:
        raise ValueError("gradcheck: no input requires grad; pass tensors with requires_grad=True")
    for i in diff_idx:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; finite "
                             "differences need float64 inputs (use .double())")

    with no_grad():
        outs0 = _outputs_tuple(fn(*inputs))
    out_sizes = [o.numel() for o in outs0]

    # numerical jacobian, one column per input element
    numerical = {}
    for i in diff_idx:
        x = inputs[i]
        arr = x._data  # perturbed in place (also when not contiguous: no reshape copy)
        n = arr.size
        jac = [np.zeros((n, s)) for s in out_sizes]
        for k in range(n):
            pos = np.unravel_index(k, arr.shape)
            orig = arr[pos].item()
            with no_grad():
                arr[pos] = orig + eps
                plus = [np.array(o._data, dtype=np.float64).reshape(-1) for o in _outputs_tuple(fn(*inputs))]
                arr[pos] = orig - eps
                minus = [np.array(o._data, dtype=np.float64).reshape(-1) for o in _outputs_tuple(fn(*inputs))]
                arr[pos] = orig
            for j in range(len(out_sizes)):
                jac[j][k] = (plus[j] - minus[j]) / (2 * eps)
        numerical[i] = jac

    # analytical jacobian, one row per output element
    analytical = {i: [np.zeros((inputs[i].numel(), s)) for s in out_sizes] for i in diff_idx}
    diff_inputs = [inputs[i] for i in diff_idx]
    for j, s in enumerate(out_sizes):
        for m in range(s):
            outs = _outputs_tuple(fn(*inputs))
            if not outs[j].requires_grad:
                break
            seed = np.zeros(outs[j].shape, dtype=outs[j].dtype).reshape(-1)
            seed[m] = 1
            grads = autograd_grad(outs[j], diff_inputs, grad_outputs=Tensor._make(seed.reshape(outs[j].shape)),
                                  allow_unused=True, retain_graph=True)
            for i, g in zip(diff_idx, grads):
                if g is not None:
                    analytical[i][j][:, m] = np.asarray(g._data, dtype=np.float64).reshape(-1)

    worst = None
    for i in diff_idx:
        for j in range(len(out_sizes)):
            a, nmr = analytical[i][j], numerical[i][j]
            if a.size == 0:
                continue
            err = np.abs(a - nmr) - (atol + rtol * np.abs(nmr))
            k = np.unravel_index(np.argmax(err), err.shape)
            if err[k] > 0 and (worst is None or err[k] > worst[0]):
                worst = (err[k], i, j, k, a[k], nmr[k])
    if worst is None:
        return True
    _, i, j, (k, m), a, nmr = worst
    x = inputs[i]
    elem = [int(v) for v in np.unravel_index(k, x.shape)] if x.ndim else []
    msg = (f"gradcheck failed: d(output {j})[{m}] / d(input {i}){list(elem)}: analytical "
           f"{a:.8g} vs numerical {nmr:.8g} (abs diff {abs(a - nmr):.3g}, atol {atol}, rtol {rtol})")
    if raise_exception:
        raise GradcheckError(msg)
    return False
