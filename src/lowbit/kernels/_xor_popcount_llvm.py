"""The packed ±1 product (docs/math.md B4) as an AVX-512 micro-kernel in LLVM IR, compiled for this CPU at first use.

Layout: one ``zmm`` register holds word ``w`` of 8 *different* rows of ``B`` (one per 64-bit lane), and word ``w``
of a row of ``A`` is broadcast to all 8 lanes. ``VPXORQ + VPOPCNTQ + VPADDQ`` then advances 8 outputs by 64 bits
of ``K`` each, and every lane of an accumulator ends as one finished output: no horizontal sums, and the word
count needs no padding. ``B`` is first copied into that interleaved order, ``8·VECS`` columns per panel, columns
past ``N`` zero (``xor_popcount_pack``, one pass, ~0.2% of the product at 4096³).

``xor_popcount_gemm`` register-blocks ``ROWS`` rows of ``A`` × ``VECS`` vectors of ``B`` (24 accumulators of the
32 ``zmm`` registers, so each word loaded serves 4 or 6 XORs). Loop order: a group of panels that fits L2
(512 KiB) × blocks of rows of ``A`` (in L1 while the group streams past) × the panels, so each block writes its
output rows left to right. Two accumulators narrow into one 64-byte int32 store (``VPERMT2D``); rows past the
end re-read the last row and are not stored, columns past ``N`` are masked off. Threads take row ranges (or
panel ranges when there are fewer row blocks) in numba's parallel pool, the pool that packs and unfolds the
signs around this product. A pool of our own would compete with that pool's workers, which spin for a while
after each parallel loop: on 2 cores a second thread then gained nothing inside a network (docs/benchmarks.md).

The ceiling: on Zen 4 each 512-bit op occupies two of the four 256-bit vector pipes, so the three ops per 512
MACs cap a core at 4·256/3 ≈ 341 binary MACs per cycle, half of what full-width pipes would give
(benchmarks/binary_gemm.py measures it with a register-only loop). This kernel reaches ~90% of it.

Example:
    >>> import numpy as np
    >>> a, b = np.array([[0b101]], dtype=np.uint64), np.array([[0b001]], dtype=np.uint64)  # (+1, −1, +1), (+1, −1, −1)
    >>> kernel = load()  # None without AVX-512 VPOPCNTQ
    >>> kernel is None or kernel(a, b, 3, threads=1).tolist() == [[1]]
    True
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir

__all__ = ["ROWS", "VECS", "XorPopcountGemm", "load", "compile_kernel", "build_ir"]

ROWS, VECS, LANES = 6, 4, 8  # the default register block: 6 rows × 4·8 columns, 24 of the 32 zmm registers
_ALIGN = 64  # bytes: one zmm load, one cache line
_I1, _I32, _I64, _PTR = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.PointerType()
_PAIR = 2 * LANES  # int32 outputs of two accumulators, one 64-byte store
_V64, _V32, _MASK = ir.VectorType(_I64, LANES), ir.VectorType(_I32, _PAIR), ir.VectorType(_I1, _PAIR)
_NEEDED = ("avx512f", "avx512vpopcntdq")  # 512-bit XOR/ADD and the vector popcount; without them: numba


def _const(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _splat(builder: ir.IRBuilder, scalar: ir.Value, vtype: ir.VectorType) -> ir.Value:
    """``scalar`` in every lane (LLVM folds a broadcast load into the XOR's ``{1to8}`` operand or a VPBROADCASTQ)."""
    one = builder.insert_element(ir.Constant(vtype, ir.Undefined), scalar, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vtype.count), [0] * vtype.count)
    return builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined), zeros)


class _Loop:
    """``for i in range(start, stop, step)`` as LLVM blocks; ``with _Loop(...) as i:`` emits the body."""

    def __init__(self, builder: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: int | ir.Value, name: str,
                 ) -> None:
        self.builder, self.start, self.stop, self.name = builder, start, stop, name
        self.step = _const(step) if isinstance(step, int) else step

    def __enter__(self) -> ir.Value:
        b = self.builder
        fn = b.block.function
        self.before = b.block
        self.head, self.body = fn.append_basic_block(f"{self.name}.head"), fn.append_basic_block(f"{self.name}.body")
        self.exit = fn.append_basic_block(f"{self.name}.exit")
        b.branch(self.head)
        b.position_at_end(self.head)
        self.index = b.phi(_I64, name=self.name)
        self.index.add_incoming(self.start, self.before)
        b.cbranch(b.icmp_signed("<", self.index, self.stop), self.body, self.exit)
        b.position_at_end(self.body)
        return self.index

    def __exit__(self, *exc: object) -> None:
        b = self.builder
        self.index.add_incoming(b.add(self.index, self.step), b.block)
        b.branch(self.head)
        b.position_at_end(self.exit)


def build_ir(rows: int = ROWS, vecs: int = VECS) -> str:
    """LLVM IR of ``xor_popcount_pack`` and ``xor_popcount_gemm`` for a ``rows`` × ``vecs·8`` register block.

    With ``width = vecs·8`` columns per panel and all integers ``i64``:

    - ``pack(b, n, words, packed)``: ``packed[p, w, c] = b[p·width + c, w]``, zero for rows past ``n``;
    - ``gemm(a, packed, out, n, words, k, r0, r1, p0, p1, group)``: ``out[i, j] = k − 2·Σ_w popcount(a[i, w] ^
      b[j, w])`` for rows ``r0 ≤ i < r1`` and the columns of panels ``p0 ≤ p < p1``, ``group`` panels at a time
      (sized to stay in L2 while every block of rows passes over them). ``packed`` must be 64-byte aligned.

    Args:
        rows: rows of ``A`` per register block.
        vecs: 8-column vectors of ``B`` per register block (``rows·vecs`` accumulators must fit 32 registers).

    Returns:
        The module's text, ready for ``llvmlite.binding.parse_assembly``.

    Raises:
        ValueError: a block that cannot fit the register file.
    """
    if rows < 1 or vecs < 2 or vecs % 2 or rows * vecs + vecs + 2 > 32:
        raise ValueError(f"build_ir: a {rows}×{vecs} block must have an even vecs ≥ 2 and fit 32 zmm registers "
                         f"({rows * vecs + vecs + 2} needed)")
    module = ir.Module(name="xor_popcount_llvm")
    _emit_pack(module, vecs * LANES)
    _emit_gemm(module, rows, vecs)
    return str(module)


def _function(module: ir.Module, name: str, args: list[ir.Type]) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), args), name=name)
    for arg in fn.args:
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _emit_pack(module: ir.Module, width: int) -> None:
    fn, bld = _function(module, "xor_popcount_pack", [_PTR, _I64, _I64, _PTR])
    b_rows, n, words, packed = fn.args
    panels = bld.sdiv(bld.add(n, _const(width - 1)), _const(width))
    with _Loop(bld, _const(0), panels, 1, "panel") as p:
        with _Loop(bld, _const(0), _const(width), 1, "col") as c:
            col = bld.add(bld.mul(p, _const(width)), c)
            inside = bld.icmp_signed("<", col, n)
            src_row = bld.gep(b_rows, [bld.mul(bld.select(inside, col, _const(0)), words)], source_etype=_I64)
            dst_col = bld.gep(packed, [bld.add(bld.mul(bld.mul(p, words), _const(width)), c)], source_etype=_I64)
            with _Loop(bld, _const(0), words, 1, "word") as w:
                word = bld.load(bld.gep(src_row, [w], source_etype=_I64), typ=_I64, align=8)
                dst = bld.gep(dst_col, [bld.mul(w, _const(width))], source_etype=_I64)
                bld.store(bld.select(inside, word, _const(0)), dst, align=8)
    bld.ret_void()


def _emit_gemm(module: ir.Module, rows: int, vecs: int) -> None:
    width = vecs * LANES
    fn, bld = _function(module, "xor_popcount_gemm", [_PTR, _PTR, _PTR] + [_I64] * 8)
    a, packed, out, n, words, k, r0, r1, p0, p1, group = fn.args
    ctpop = ir.Function(module, ir.FunctionType(_V64, [_V64]), name="llvm.ctpop.v8i64")
    masked_store = ir.Function(module, ir.FunctionType(ir.VoidType(), [_V32, _PTR, _I32, _MASK]),
                               name="llvm.masked.store.v16i32.p0")
    lane_ids = ir.Constant(_V32, list(range(_PAIR)))
    n32 = bld.trunc(n, _I32)  # N < 2³¹: the caller's int32 output has N·M elements
    k_vec, n_vec = _splat(bld, bld.trunc(k, _I32), _V32), _splat(bld, n32, _V32)
    one_vec = _splat(bld, ir.Constant(_I32, 1), _V32)
    last_row = bld.sub(r1, _const(1))
    # Loop order: `group` panels of B (sized to stay in L2) × blocks of `rows` rows of A (in L1 while the group's
    # panels stream past) × the panels. Each block's output rows are then written left to right.
    with _Loop(bld, p0, p1, group, "group") as g0:
        g1 = bld.select(bld.icmp_signed("<", bld.add(g0, group), p1), bld.add(g0, group), p1)
        with _Loop(bld, r0, r1, rows, "block") as i0:
            # Rows past r1 re-read the last row (valid memory) and are not stored.
            row_ids = [bld.add(i0, _const(r)) for r in range(rows)]
            row_ptrs = [bld.gep(a, [bld.mul(bld.select(bld.icmp_signed("<", i, r1), i, last_row), words)],
                                source_etype=_I64) for i in row_ids]
            with _Loop(bld, g0, g1, 1, "panel") as p:
                col0 = bld.mul(p, _const(width))
                panel = bld.gep(packed, [bld.mul(col0, words)], source_etype=_I64)
                acc = _emit_word_loop(bld, ctpop, row_ptrs, panel, words, vecs)
                # Two neighbouring accumulators narrow into one 16-lane int32 vector (one VPERMT2D), so the epilogue
                # runs half as many ops and writes whole 64-byte lines. B4: a·b = K − 2·popcount (|a·b| ≤ K < 2³¹).
                values = [bld.sub(k_vec, bld.shl(_narrow_pair(bld, acc[j], acc[j + 1]), one_vec))
                          for j in range(0, len(acc), 2)]
                with bld.if_else(bld.icmp_signed("<=", bld.add(col0, _const(width)), n)) as (full, partial):
                    with full:
                        _emit_stores(bld, out, row_ids, r1, n, col0, values, None)
                    with partial:  # the last panel: lanes of columns past N are masked off
                        first = [bld.trunc(bld.add(col0, _const(v * _PAIR)), _I32) for v in range(vecs // 2)]
                        masks = [bld.icmp_signed("<", bld.add(_splat(bld, c, _V32), lane_ids), n_vec) for c in first]
                        _emit_stores(bld, out, row_ids, r1, n, col0, values, (masked_store, masks))
    bld.ret_void()


def _narrow_pair(bld: ir.IRBuilder, low: ir.Value, high: ir.Value) -> ir.Value:
    """The low 32 bits of the 8 lanes of ``low`` then of ``high``, as one ``<16 x i32>``."""
    halves = [bld.bitcast(v, _V32) for v in (low, high)]
    return bld.shuffle_vector(halves[0], halves[1], ir.Constant(_V32, list(range(0, 2 * _PAIR, 2))))


def _emit_stores(bld: ir.IRBuilder, out: ir.Value, row_ids: list[ir.Value], r1: ir.Value, n: ir.Value,
                 col0: ir.Value, values: list[ir.Value], masked: tuple | None) -> None:
    """Store a block's int32 rows below ``r1``; ``masked`` = (``llvm.masked.store``, lane masks) or ``None``."""
    per_row = len(values) // len(row_ids)
    for r, row in enumerate(row_ids):
        with bld.if_then(bld.icmp_signed("<", row, r1)):
            out_row = bld.gep(out, [bld.add(bld.mul(row, n), col0)], source_etype=_I32)
            for v in range(per_row):
                dst = bld.gep(out_row, [_const(v * _PAIR)], source_etype=_I32)
                if masked is None:
                    bld.store(values[r * per_row + v], dst, align=4)
                else:
                    bld.call(masked[0], [values[r * per_row + v], dst, ir.Constant(_I32, 4), masked[1][v]])


def _emit_word_loop(bld: ir.IRBuilder, ctpop: ir.Function, row_ptrs: list[ir.Value], panel: ir.Value,
                    words: ir.Value, vecs: int) -> list[ir.Value]:
    """The hot loop over words; its ``rows·vecs`` accumulators are phi nodes, so they live in zmm registers."""
    fn, pre = bld.block.function, bld.block
    head, body, done = (fn.append_basic_block(f"word.{part}") for part in ("head", "body", "exit"))
    bld.branch(head)
    bld.position_at_end(head)
    w = bld.phi(_I64, name="w")
    w.add_incoming(_const(0), pre)
    acc = [bld.phi(_V64, name=f"acc{j}") for j in range(len(row_ptrs) * vecs)]
    for phi in acc:
        phi.add_incoming(ir.Constant(_V64, [0] * LANES), pre)
    bld.cbranch(bld.icmp_signed("<", w, words), body, done)
    bld.position_at_end(body)
    b_word = bld.gep(panel, [bld.mul(w, _const(vecs * LANES))], source_etype=_I64)
    b_vecs = [bld.load(bld.gep(b_word, [_const(v * LANES)], source_etype=_I64), typ=_V64, align=_ALIGN)
              for v in range(vecs)]
    for r, row in enumerate(row_ptrs):
        a_word = _splat(bld, bld.load(bld.gep(row, [w], source_etype=_I64), typ=_I64, align=8), _V64)
        for v in range(vecs):
            acc[r * vecs + v].add_incoming(
                bld.add(acc[r * vecs + v], bld.call(ctpop, [bld.xor(a_word, b_vecs[v])])), body)
    w.add_incoming(bld.add(w, _const(1)), body)
    bld.branch(head)
    bld.position_at_end(done)
    return acc


@dataclass(frozen=True)
class XorPopcountGemm:
    """A compiled kernel: ``kernel(a, b, k, threads)`` is ``A @ B.T`` of packed ±1 rows as int32.

    Attributes:
        backend: what runs, e.g. ``"llvm-avx512 (znver4, 6x32 block)"``.
        rows: rows of ``A`` per register block.
        panel: columns of ``B`` per register block (8 per vector).
    """

    backend: str
    rows: int
    panel: int
    _engine: object  # owns the machine code the two function pointers point into
    _pack: ctypes._CFuncPtr
    _gemm: ctypes._CFuncPtr
    _run: object  # :func:`_job_runner` of ``_gemm``

    def __call__(self, a: np.ndarray, b: np.ndarray, k: int, threads: int) -> np.ndarray:
        """``out[i, j] = k − 2·popcount(a[i] XOR b[j])`` over the words, split across ``threads`` threads.

        Args:
            a: ``(M, W)`` C-contiguous ``uint64`` rows of ``A``.
            b: ``(N, W)`` C-contiguous ``uint64`` rows of ``B``.
            k: the unpacked length (the caller checked that ``W`` words hold it).
            threads: how many of numba's threads share the work.

        Returns:
            ``(M, N)`` ``int32`` array.
        """
        (m, words), n = a.shape, b.shape[0]
        out = np.empty((m, n), dtype=np.int32)
        if m == 0 or n == 0:
            return out
        panels = -(-n // self.panel)
        packed = _aligned(panels * words * self.panel)  # B in panel order, ~N·W·8 bytes; alive until calls return
        self._pack(b.ctypes.data, n, words, packed.ctypes.data)
        # Panels per group: ~512 KiB of packed B stays in L2 (1 MiB per core here) while blocks of A pass over it.
        group = max(1, _GROUP_BYTES // (8 * words * self.panel))
        # A thread costs tens of µs to wake: small products run on fewer (the integers are the same either way).
        threads = max(1, min(threads, m * n * words // _WORK_PER_THREAD))
        jobs = np.array(_split(m, self.rows, panels, threads), dtype=np.int64)
        previous = numba.get_num_threads()
        numba.set_num_threads(max(1, min(len(jobs), numba.config.NUMBA_NUM_THREADS)))
        try:  # the addresses stay valid: a, packed and out are alive until the call returns
            self._run(a.ctypes.data, packed.ctypes.data, out.ctypes.data, n, words, k, jobs, group)
        finally:
            numba.set_num_threads(previous)
        return out


_GROUP_BYTES = 512 * 1024
_WORK_PER_THREAD = 1 << 21  # word pairs, ≈ 0.1 ms of one core


def _split(m: int, rows: int, panels: int, threads: int) -> list[tuple[int, int, int, int]]:
    """(r0, r1, p0, p1) per thread: cut whichever of rows (in blocks of ``rows``) or panels has more pieces."""
    blocks = -(-m // rows)
    if blocks >= panels:
        cuts = [min(m, rows * (blocks * t // threads)) for t in range(threads + 1)]
        jobs = [(cuts[t], cuts[t + 1], 0, panels) for t in range(threads)]
    else:
        cuts = [panels * t // threads for t in range(threads + 1)]
        jobs = [(0, m, cuts[t], cuts[t + 1]) for t in range(threads)]
    return [job for job in jobs if job[0] < job[1] and job[2] < job[3]]


def _aligned(size: int) -> np.ndarray:
    """``size`` ``uint64`` starting on a 64-byte boundary (the panel loads are aligned)."""
    raw = np.empty(size + _ALIGN // 8, dtype=np.uint64)
    skip = (-raw.ctypes.data % _ALIGN) // 8
    return raw[skip:skip + size]


def _job_runner(gemm: ctypes._CFuncPtr) -> object:
    """A numba function running ``gemm`` once per row of ``jobs`` (``r0, r1, p0, p1``) on numba's threads.

    numba calls the compiled kernel through a ctypes prototype with integer arguments (addresses included), so
    the call costs no Python; compiling it takes about a second, once per process.
    """
    call = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 11)(ctypes.cast(gemm, ctypes.c_void_p).value)

    @numba.njit(parallel=True, nogil=True)
    def run(a: int, packed: int, out: int, n: int, words: int, k: int, jobs: np.ndarray, group: int) -> None:
        for t in numba.prange(jobs.shape[0]):
            call(a, packed, out, n, words, k, jobs[t, 0], jobs[t, 1], jobs[t, 2], jobs[t, 3], group)

    return run


@functools.cache
def load() -> XorPopcountGemm | None:
    """Compile the kernel for this CPU once per process; ``None`` where it lacks AVX-512 VPOPCNTQ.

    Returns:
        The kernel, or ``None`` (the caller then uses its portable numba kernel). A compilation failure on a CPU
        that has the features warns once and also returns ``None``.
    """
    import llvmlite.binding as llvm

    if not all(llvm.get_host_cpu_features().get(name, False) for name in _NEEDED):
        return None
    try:
        return compile_kernel(ROWS, VECS)
    except Exception as error:  # any LLVM failure means: use the portable kernel
        warnings.warn(f"lowbit: the AVX-512 binary GEMM did not compile ({error}); using numba", stacklevel=2)
        return None


def compile_kernel(rows: int, vecs: int) -> XorPopcountGemm:
    """Compile :func:`build_ir` for the host CPU (about 0.1 s); :func:`load` caches the default block.

    Args:
        rows: rows of ``A`` per register block.
        vecs: 8-column vectors of ``B`` per register block.

    Returns:
        The kernel.

    Raises:
        ValueError: a block that does not fit (see :func:`build_ir`); LLVM's errors as they come.
    """
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    cpu = llvm.get_host_cpu_name()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=llvm.get_host_cpu_features().flatten(), opt=3)
    module = llvm.parse_assembly(build_ir(rows, vecs))
    module.verify()
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(module, passes)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    pack = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        engine.get_function_address("xor_popcount_pack"))
    gemm = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 8)(
        engine.get_function_address("xor_popcount_gemm"))
    return XorPopcountGemm(f"llvm-avx512 ({cpu}, {rows}x{vecs * LANES} block)", rows, vecs * LANES, engine, pack,
                           gemm, _job_runner(gemm))
