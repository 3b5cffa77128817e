"""GradBucket / build_buckets and the comm-hook Future, in one process."""
import threading

import numpy as np
import pytest

import deepseek as ds
from deepseek.collectives.work import Work
from deepseek.distributed.buckets import GradBucket, build_buckets
from deepseek.distributed.futures import Future


def _params(*shapes, dtype=np.float32, names="abcdefgh"):
    return [(names[i], ds.from_numpy(np.zeros(s, dtype)).requires_grad_())
            for i, s in enumerate(shapes)]


def test_build_buckets_reverse_order_and_a_small_first_bucket():
    named = _params((256, 256), (256,), (256, 256), (256,))  # a, c: 256 KiB; b, d: 1 KiB
    buckets = build_buckets(named, cap_bytes=300 << 10, first_cap_bytes=2 << 10)
    # reverse order; the first bucket closes at 2 KiB, the others at 300 KiB
    assert [b.names for b in buckets] == [["d"], ["c", "b"], ["a"]]
    assert [b.index() for b in buckets] == [0, 1, 2]
    assert [b.is_last() for b in buckets] == [False, False, True]
    assert buckets[1].numel == 256 + 256 * 256
    assert [p for p in buckets[1].parameters()] == [named[2][1], named[1][1]]


def test_auto_bucket_cap_cuts_small_models_and_keeps_25_mib_for_large_ones():
    from deepseek.distributed.buckets import auto_bucket_cap

    assert auto_bucket_cap(0) == 1 << 20              # never below 1 MiB
    assert auto_bucket_cap(16 << 20) == 2 << 20       # 1/8 of the gradient
    assert auto_bucket_cap(440 << 20) == 25 << 20     # BERT-base: PyTorch's cap
    # the MLP (784-1024-1024-10, 7.4 MB): the fixed 25 MB cap gives two
    # buckets, the big one full only when backward ends; the automatic one (1 MiB)
    # gives about one bucket per layer, so the last layers' reduction overlaps the
    # first's backward
    named = _params((784, 1024), (1024,), (1024, 1024), (1024,), (1024, 10), (10,),
                    names="abcdef")
    total = sum(p._data.nbytes for _, p in named)
    assert len(build_buckets(named, 25 << 20)) == 2
    auto = build_buckets(named, auto_bucket_cap(total))
    assert len(auto) == 4
    assert [b.names for b in auto] == [["f", "e", "d"], ["c"], ["b"], ["a"]]


def test_build_buckets_one_dtype_per_bucket():
    named = _params((4,), (4,)) + _params((4,), dtype=np.float64, names="z") + \
        _params((4,), names="c")
    buckets = build_buckets(named, cap_bytes=1 << 20)
    assert [b.names for b in buckets] == [["c"], ["z"], ["b", "a"]]
    assert [b.buffer().dtype for b in buckets] == [np.float32, np.float64, np.float32]


def test_bucket_fill_makes_grad_a_view_and_counts_once():
    (_, a), (_, b) = _params((2, 3), (4,))
    bucket = GradBucket(0, [a, b], ["a", "b"], np.float32)
    a.grad = ds.from_numpy(np.ones((2, 3), np.float32))
    assert bucket.fill(0, a) and not bucket.is_full()
    assert not bucket.fill(0, a)  # the same parameter again: not counted twice
    assert bucket.missing() == [1]
    bucket.fill_zeros(1)
    assert bucket.is_full() and b.grad is bucket.gradients()[1]
    bucket.buffer()[:] = np.arange(10)
    np.testing.assert_array_equal(a.grad.numpy(), np.arange(6).reshape(2, 3))
    bucket.set_buffer(np.full(10, 7.0))
    assert (a.grad.numpy() == 7).all() and (b.grad.numpy() == 7).all()
    bucket.reset()
    assert bucket.missing() == [0, 1]
    assert bucket.parameters() == [a, b]


def test_wire_buffers_are_cached_per_dtype_and_extra():
    (_, a), = _params((5,))
    bucket = GradBucket(0, [a], ["a"], np.float32)
    w = bucket.wire_buffer(np.float16, 1)
    assert w.shape == (6,) and w.dtype == np.float16
    assert bucket.wire_buffer(np.float16, 1) is w
    assert bucket.wire_buffer(np.float16) is not w


def test_future_then_runs_once_in_the_waiting_thread():
    work = Work("test op")
    ran = []
    fut = Future.from_work(work, value="raw").then(
        lambda f: ran.append(threading.current_thread()) or f.value() + "!")
    t = threading.Thread(target=work._finish)
    t.start()
    t.join()
    assert not ran and not fut.done()  # lazily: nothing ran on completion
    assert fut.wait() == "raw!" and fut.value() == "raw!"
    assert ran == [threading.current_thread()] and fut.done()


def test_future_errors_reach_every_wait():
    def boom(_):
        raise ValueError("decode failed")
    fut = Future.completed(1).then(boom)
    for _ in range(2):
        with pytest.raises(ValueError, match="decode failed"):
            fut.wait()
    work = Work("failing op")
    work._finish(RuntimeError("peer died"))
    with pytest.raises(RuntimeError, match="peer died"):
        Future.from_work(work).then(lambda f: 1).wait()
    assert Future.from_work(None, value=3).wait() == 3  # a blocking op's None work
