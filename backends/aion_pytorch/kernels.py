"""AION's eager training step as one C++ kernel each way (CPU): the closed form of :mod:`aion_core.closed_form`.

Eager torch pays about 10 us per op whatever it computes (docs/overhead.md), and the
closed-form node (:mod:`aion_pytorch.closed_form`) runs some sixty small ops per layer. Here
its forward (both energies, the batch ratio, the guard and EMA of spec section 5, alpha, the
multiply-add and the new state) is one call of a C++ function, and its backward (alpha's
gradient ``sum(dout * y)``, the ratio's, ``dy`` and ``dx_ref``) another. The arithmetic is that
of :func:`aion_core.adapter.train_forward` and :func:`aion_core.adapter.train_vjp`, written
in the same order and dtypes (the accumulation dtype: float32, float64 for float64 inputs;
16-bit inputs are read as float32 and rounded once on output); the sums are accumulated in
float64 row by row (torch's own sums are cascaded in float32), so results agree with the op
path to the last few bits, not bit for bit.

The source is compiled once per machine by :func:`torch.utils.cpp_extension.load_inline`
(g++, OpenMP; cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``) the first time a layer trains eagerly on the CPU, and
registered as the ops ``aion_kernels::train_forward`` / ``aion_kernels::train_backward``
(with fake kernels, so that tracers see shapes; compiled models never call them: under
``torch.compile`` the layer keeps the standard ops, which Inductor fuses). Shapes and dtypes
are runtime arguments: one build serves every batch, sequence and width.

Which path the eager layer takes: ``AION_TORCH_KERNELS`` (read at import) or
:func:`set_kernels`:

* ``auto`` (default): the C++ kernel where it applies, the op path elsewhere; if the build
  fails (no compiler), one warning and the op path from then on;
* ``cpp``: as ``auto``, but a failed build raises;
* ``ops``: the op path (:mod:`aion_pytorch.closed_form`) always.

Where the kernel does not apply, the op path runs: CUDA and other devices (no GPU kernel
is shipped), tensor subclasses (``DTensor``), and ``sync_ratio`` with a process group of more
than one rank (the ratio's all-reduce sits between the reductions, and the kernel holds no
collective).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings

import torch

#: The environment variable read at import: ``auto`` | ``cpp`` | ``ops``.
ENV = "AION_TORCH_KERNELS"
_MODES = ("auto", "cpp", "ops")

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

// Rows per parallel chunk: about 32k elements each, so small tensors stay on one thread.
inline int64_t grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

// sum_j (A(a_j) * A(b_j)), each product rounded to A, summed in float64 over independent
// lanes (a single accumulator would make the loop latency-bound).
template <typename T, typename A>
inline double sum_products(const T* a, const T* b, int64_t D) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t j = 0;
  for (; j + 4 <= D; j += 4) {
    A p0 = static_cast<A>(a[j]) * static_cast<A>(b[j]);
    A p1 = static_cast<A>(a[j + 1]) * static_cast<A>(b[j + 1]);
    A p2 = static_cast<A>(a[j + 2]) * static_cast<A>(b[j + 2]);
    A p3 = static_cast<A>(a[j + 3]) * static_cast<A>(b[j + 3]);
    s0 += static_cast<double>(p0); s1 += static_cast<double>(p1);
    s2 += static_cast<double>(p2); s3 += static_cast<double>(p3);
  }
  for (; j < D; ++j) { A p = static_cast<A>(a[j]) * static_cast<A>(b[j]); s0 += static_cast<double>(p); }
  return (s0 + s1) + (s2 + s3);
}

#ifdef __AVX2__
template <>
inline double sum_products<float, float>(const float* a, const float* b, int64_t D) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 16 <= D; j += 16) {
    __m256 p0 = _mm256_mul_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    __m256 p1 = _mm256_mul_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(p0)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(p0, 1)));
    s2 = _mm256_add_pd(s2, _mm256_cvtps_pd(_mm256_castps256_ps128(p1)));
    s3 = _mm256_add_pd(s3, _mm256_cvtps_pd(_mm256_extractf128_ps(p1, 1)));
  }
  __m256d t = _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, t);
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; j < D; ++j) { float p = a[j] * b[j]; s += static_cast<double>(p); }
  return s;
}
#endif

// Per-row energies E[x_ref], E[y] -> denominator E[x_ref] + eps and per-row ratio, in A.
template <typename T, typename A>
void energies(const T* xr, const T* y, int64_t R, int64_t D, A eps, A* den, A* per) {
  at::parallel_for(0, R, grain(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* a = xr + i * D; const T* c = y + i * D;
      double sx = sum_products<T, A>(a, a, D), sy = sum_products<T, A>(c, c, D);
      A ex = static_cast<A>(sx / static_cast<double>(D));
      A ey = static_cast<A>(sy / static_cast<double>(D));
      den[i] = ex + eps;
      per[i] = ey / den[i];
    }
  });
}

template <typename T, typename A>
void residual(const T* x, const T* y, T* out, int64_t n, A alpha) {
  at::parallel_for(0, n, 32768, [&](int64_t b, int64_t e) {
    if (x) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        A p = alpha * static_cast<A>(y[i]);
        out[i] = static_cast<T>(static_cast<A>(x[i]) + p);
      }
    } else {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) out[i] = static_cast<T>(alpha * static_cast<A>(y[i]));
    }
  });
}

inline at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline at::ScalarType out_dtype(const c10::optional<at::Tensor>& x, const at::Tensor& y) {
  if (!x.has_value() || x->scalar_type() == y.scalar_type()) return y.scalar_type();
  if (x->scalar_type() == at::kDouble || y.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// The forward, in T (all of x, y, x_ref) with accumulation dtype A.
template <typename T, typename A>
std::vector<at::Tensor> forward_impl(const c10::optional<at::Tensor>& x, const at::Tensor& y, const at::Tensor& xr,
                                     double alpha0_in, double beta_in, float ema, int32_t step, int32_t nonfinite,
                                     bool update, double eps, double gamma, at::ScalarType acc_type) {
  const int64_t D = y.size(-1), n = y.numel(), R = n / std::max<int64_t>(D, 1);
  auto aopt = y.options().dtype(acc_type);
  at::Tensor rows = update ? at::empty({2, R}, aopt) : at::empty({0}, aopt);
  A alpha0 = static_cast<A>(alpha0_in), beta = static_cast<A>(beta_in);
  A ema_acc = static_cast<A>(ema);
  A r_s, ratio_stat, ratio_slope = A(0);
  float new_ema = ema;
  int32_t new_nonfinite = nonfinite;
  if (update) {
    A* den = rows.data_ptr<A>(); A* per = den + R;
    energies<T, A>(xr.data_ptr<T>(), y.data_ptr<T>(), R, D, static_cast<A>(eps), den, per);
    double s = 0.0;
    for (int64_t i = 0; i < R; ++i) s += static_cast<double>(per[i]);
    A r = static_cast<A>(s / static_cast<double>(R));
    bool finite = std::isfinite(static_cast<float>(r));
    A r_safe = finite ? r : ema_acc;
    if (gamma == 1.0) {
      r_s = r_safe;
    } else {
      A g = static_cast<A>(gamma), omg = static_cast<A>(1.0 - gamma);
      A a = g * ema_acc; A b = omg * r_safe;
      r_s = finite ? a + b : ema_acc;
    }
    if (finite) new_ema = static_cast<float>(r_s);
    new_nonfinite = nonfinite + (finite ? 0 : 1);
    ratio_stat = r;
    ratio_slope = finite ? static_cast<A>(gamma == 1.0 ? 1.0 : 1.0 - gamma) : A(0);
    if (!finite) for (int64_t i = 0; i < R; ++i) per[i] = A(0);
  } else {
    r_s = ema_acc;
    ratio_stat = r_s;
  }
  A bq = beta * r_s; A q = A(1) + bq;
  A alpha = alpha0 / q;
  at::Tensor out = at::empty_like(y, y.options(), at::MemoryFormat::Contiguous);
  residual<T, A>(x.has_value() ? x->data_ptr<T>() : nullptr, y.data_ptr<T>(), out.data_ptr<T>(), n, alpha);
  at::Tensor sc = at::empty({5}, aopt);
  A* s5 = sc.data_ptr<A>();
  s5[0] = alpha; s5[1] = r_s; s5[2] = ratio_slope; s5[3] = beta; s5[4] = ratio_stat;
  auto f32 = y.options().dtype(at::kFloat);
  auto i32 = y.options().dtype(at::kInt);
  // step_count + 1 wraps in int32 (spec section 3).
  int32_t new_step = static_cast<int32_t>(static_cast<uint32_t>(step) + 1u);
  return {out, rows, sc, at::scalar_tensor(static_cast<double>(new_ema), f32),
          at::scalar_tensor(static_cast<int64_t>(new_step), i32),
          at::scalar_tensor(static_cast<int64_t>(new_nonfinite), i32),
          at::scalar_tensor(static_cast<double>(alpha), aopt),
          at::scalar_tensor(static_cast<double>(ratio_stat), aopt)};
}

double scalar(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.numel() == 1, "aion_kernels: 0-d CPU parameters");
  switch (t.scalar_type()) {
    case at::kFloat: return *t.data_ptr<float>();
    case at::kDouble: return *t.data_ptr<double>();
    case at::kHalf: return static_cast<float>(*t.data_ptr<at::Half>());
    case at::kBFloat16: return static_cast<float>(*t.data_ptr<at::BFloat16>());
    default: TORCH_CHECK(false, "aion_kernels: floating parameters"); return 0.0;
  }
}

bool same_dtype(const c10::optional<at::Tensor>& x, const at::Tensor& y, const at::Tensor& xr) {
  auto t = y.scalar_type();
  return (!x.has_value() || x->scalar_type() == t) && xr.scalar_type() == t;
}

at::Tensor prep(const at::Tensor& t, bool same, at::ScalarType acc) {
  return same ? t.contiguous() : t.to(acc).contiguous();
}

}  // namespace

// Returns (out, rows [2, R]: denominator and per-row ratio, zeroed where guarded; empty on a hold
// step, sc [alpha, r_s, ratio_slope, beta, ratio] in the accumulation dtype, new ratio_ema,
// new step_count, new nonfinite_count, alpha, ratio (0-d, accumulation dtype)). With write_state
// the three state tensors are written in place.
std::vector<at::Tensor> train_forward(const c10::optional<at::Tensor>& x, const at::Tensor& y,
                                      const c10::optional<at::Tensor>& x_norm, const at::Tensor& alpha0,
                                      const at::Tensor& beta, const at::Tensor& ratio_ema,
                                      const at::Tensor& step_count, const at::Tensor& nonfinite_count,
                                      bool update, bool write_state, double eps, double gamma) {
  TORCH_CHECK(y.device().is_cpu(), "aion_kernels: CPU tensors only");
  const at::Tensor& xr0 = x_norm.has_value() ? *x_norm : *x;
  auto acc = acc_of(y.scalar_type());
  if (x.has_value()) acc = (acc == at::kDouble || acc_of(x->scalar_type()) == at::kDouble) ? at::kDouble : at::kFloat;
  if (x_norm.has_value() && x_norm->scalar_type() == at::kDouble) acc = at::kDouble;
  const bool same = same_dtype(x, y, xr0);
  c10::optional<at::Tensor> xc;
  if (x.has_value()) xc = prep(*x, same, acc);
  at::Tensor yc = prep(y, same, acc);
  at::Tensor xrc = x_norm.has_value() ? prep(*x_norm, same, acc) : *xc;
  // 0-d CPU tensors, read in place: no dispatch, no device sync.
  double a0 = scalar(alpha0), b = scalar(beta);
  TORCH_CHECK(ratio_ema.scalar_type() == at::kFloat && step_count.scalar_type() == at::kInt &&
              nonfinite_count.scalar_type() == at::kInt && ratio_ema.device().is_cpu() &&
              step_count.device().is_cpu() && nonfinite_count.device().is_cpu(),
              "aion_kernels: float32 ratio_ema and int32 counters on the CPU");
  float ema = *ratio_ema.data_ptr<float>();
  int32_t step = *step_count.data_ptr<int32_t>(), nf = *nonfinite_count.data_ptr<int32_t>();
  std::vector<at::Tensor> res;
  auto run = yc.scalar_type();
  if (acc == at::kDouble) {
    TORCH_CHECK(run == at::kDouble, "aion_kernels: float64 accumulation needs float64 inputs");
    res = forward_impl<double, double>(xc, yc, xrc, a0, b, ema, step, nf, update, eps, gamma, acc);
  } else if (run == at::kFloat) {
    res = forward_impl<float, float>(xc, yc, xrc, a0, b, ema, step, nf, update, eps, gamma, acc);
  } else if (run == at::kHalf) {
    res = forward_impl<at::Half, float>(xc, yc, xrc, a0, b, ema, step, nf, update, eps, gamma, acc);
  } else if (run == at::kBFloat16) {
    res = forward_impl<at::BFloat16, float>(xc, yc, xrc, a0, b, ema, step, nf, update, eps, gamma, acc);
  } else {
    TORCH_CHECK(false, "aion_kernels: unsupported dtype ", run);
  }
  auto od = out_dtype(x, y);
  if (res[0].scalar_type() != od) res[0] = res[0].to(od);
  if (write_state) {
    // In place, as the layer's copy_ would; the version counters move as they would.
    *ratio_ema.data_ptr<float>() = *res[3].data_ptr<float>();
    *step_count.data_ptr<int32_t>() = *res[4].data_ptr<int32_t>();
    *nonfinite_count.data_ptr<int32_t>() = *res[5].data_ptr<int32_t>();
    for (const at::Tensor* t : {&ratio_ema, &step_count, &nonfinite_count})
      if (!t->is_inference()) torch::autograd::impl::bump_version(*t);
  }
  return res;
}

namespace {

template <typename T, typename A>
std::vector<at::Tensor> backward_impl(const at::Tensor& dout, const at::Tensor& y, const c10::optional<at::Tensor>& xr,
                                      const at::Tensor& rows, const at::Tensor& sc, bool has_x, bool x_ref_is_x) {
  const int64_t D = y.size(-1), n = y.numel(), R = n / std::max<int64_t>(D, 1);
  const A* s5 = sc.data_ptr<A>();
  const A alpha = s5[0], r_s = s5[1], ratio_slope = s5[2], beta = s5[3];
  const T* d = dout.data_ptr<T>(); const T* yp = y.data_ptr<T>();
  std::vector<double> part(R);
  at::parallel_for(0, R, grain(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      part[i] = sum_products<T, A>(d + i * D, yp + i * D, D);
    }
  });
  double gs = 0.0;
  for (int64_t i = 0; i < R; ++i) gs += part[i];
  const A g = static_cast<A>(gs);
  A bq = beta * r_s; const A q = A(1) + bq;
  A ng = -g; A nga = ng * alpha; const A d_q = nga / q;
  const bool ratio = rows.numel() > 0;
  A d_r = A(0);
  // where_finite(ratio_slope > 0, ..., 0): the predicate selects (a non-finite product stays).
  if (ratio && ratio_slope > A(0)) { A t = d_q * beta; d_r = t * ratio_slope; }
  at::Tensor dy = at::empty_like(y, y.options(), at::MemoryFormat::Contiguous);
  at::Tensor dxr;
  if (ratio) dxr = at::empty_like(*xr, xr->options(), at::MemoryFormat::Contiguous);
  T* dyp = dy.data_ptr<T>();
  const A* den = ratio ? rows.data_ptr<A>() : nullptr;
  const A* per = ratio ? den + R : nullptr;
  const T* xrp = ratio ? xr->data_ptr<T>() : nullptr;
  T* dxrp = ratio ? dxr.data_ptr<T>() : nullptr;
  const A two_dr = A(2) * d_r, nf = static_cast<A>(static_cast<double>(n));
  at::parallel_for(0, R, grain(D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* di = d + i * D; const T* yi = yp + i * D; T* dyi = dyp + i * D;
      if (!ratio) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) dyi[j] = static_cast<T>(alpha * static_cast<A>(di[j]));
        continue;
      }
      A dn = nf * den[i]; const A s = two_dr / dn; const A c = (-s) * per[i];
      const T* xi = xrp + i * D; T* dxi = dxrp + i * D;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) {
        A ad = alpha * static_cast<A>(di[j]); A sy = s * static_cast<A>(yi[j]);
        dyi[j] = static_cast<T>(ad + sy);
      }
      if (x_ref_is_x) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) {
          A cx = c * static_cast<A>(xi[j]);
          dxi[j] = static_cast<T>(static_cast<A>(di[j]) + cx);
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) dxi[j] = static_cast<T>(c * static_cast<A>(xi[j]));
      }
    }
  });
  A ga = g / q; A gb = d_q * r_s;
  auto aopt = y.options().dtype(sc.scalar_type());
  return {dy, ratio ? dxr : at::Tensor(), at::scalar_tensor(static_cast<double>(ga), aopt),
          at::scalar_tensor(static_cast<double>(gb), aopt)};
}

}  // namespace

// Returns (dy, dx_ref or undefined, d alpha0, d beta). dx_ref is x's whole gradient when
// x_ref_is_x (dout + the ratio's term), x_norm's otherwise; without a ratio (hold step) dx = dout.
std::vector<at::Tensor> train_backward(const at::Tensor& dout, const at::Tensor& y,
                                       const c10::optional<at::Tensor>& x_ref,
                                       const at::Tensor& rows, const at::Tensor& sc, bool has_x, bool x_ref_is_x) {
  auto acc = sc.scalar_type();
  const bool ratio = rows.numel() > 0;
  auto t = y.scalar_type();
  bool same = dout.scalar_type() == t && (!ratio || x_ref->scalar_type() == t);
  at::Tensor dc = prep(dout, same, acc), yc = prep(y, same, acc);
  c10::optional<at::Tensor> xc;
  if (ratio) xc = prep(*x_ref, same, acc);
  auto run = yc.scalar_type();
  std::vector<at::Tensor> res;
  if (acc == at::kDouble) {
    res = backward_impl<double, double>(dc, yc, xc, rows, sc, has_x, x_ref_is_x);
  } else if (run == at::kFloat) {
    res = backward_impl<float, float>(dc, yc, xc, rows, sc, has_x, x_ref_is_x);
  } else if (run == at::kHalf) {
    res = backward_impl<at::Half, float>(dc, yc, xc, rows, sc, has_x, x_ref_is_x);
  } else if (run == at::kBFloat16) {
    res = backward_impl<at::BFloat16, float>(dc, yc, xc, rows, sc, has_x, x_ref_is_x);
  } else {
    TORCH_CHECK(false, "aion_kernels: unsupported dtype ", run);
  }
  if (res[0].scalar_type() != t) res[0] = res[0].to(t);
  if (ratio && res[1].scalar_type() != x_ref->scalar_type()) res[1] = res[1].to(x_ref->scalar_type());
  return res;
}

TORCH_LIBRARY(aion_kernels, m) {
  m.def("train_forward(Tensor? x, Tensor y, Tensor? x_norm, Tensor alpha0, Tensor beta, Tensor(a!) ratio_ema, "
        "Tensor(b!) step_count, Tensor(c!) nonfinite_count, bool update, bool write_state, float eps, float gamma) "
        "-> Tensor[]");
  m.def("train_backward(Tensor dout, Tensor y, Tensor? x_ref, Tensor rows, Tensor sc, bool has_x, bool x_ref_is_x) "
        "-> Tensor[]");
  m.impl("train_forward", torch::kCPU, &train_forward);
  m.impl("train_backward", torch::kCPU, &train_backward);
}
"""


def _flags() -> list[str]:
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c"]
    return flags


class _State:
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    module = None  # the loaded extension, False after a failed build
    builds = 0  # builds (or cache loads) run in this process: 1 at most
    lock = threading.Lock()


if _State.mode not in _MODES:
    warnings.warn(f"{ENV}={_State.mode!r} is not one of {', '.join(_MODES)}: using 'auto'", stacklevel=1)
    _State.mode = "auto"


def set_kernels(mode: str) -> None:
    """Choose the eager CPU training path: ``"auto"`` (default), ``"cpp"`` or ``"ops"`` (see the module docstring).

    >>> set_kernels("ops"); kernels_mode()
    'ops'
    >>> set_kernels("auto")
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    _State.mode = mode


def kernels_mode() -> str:
    """The path chosen: ``"auto"``, ``"cpp"`` or ``"ops"``."""
    return _State.mode


def build_count() -> int:
    """How many times this process built or loaded the extension (0 or 1: shapes never rebuild it)."""
    return _State.builds


def _name() -> str:
    digest = hashlib.sha256((_SOURCE + " ".join(_flags()) + torch.__version__).encode()).hexdigest()[:12]
    return f"aion_kernels_{digest}"


def load():
    """The compiled extension (built on first use, then cached on disk); None if it cannot be built."""
    if _State.module is None:
        with _State.lock:
            if _State.module is None:
                _State.module = _build()
    return _State.module or None


def _build():
    _State.builds += 1
    try:
        from torch.utils.cpp_extension import load_inline

        _notice_first_build()
        # The Python module's functions are the kernels themselves (no dispatcher on the hot
        # path: about 5 us a call less); loading it also registers the ops.
        module = load_inline(_name(), cpp_sources=[_SOURCE], functions=["train_forward", "train_backward"],
                             extra_cflags=_flags(), extra_ldflags=["-fopenmp"], verbose=False)
        _register_fakes()
        return module
    except Exception as error:  # no compiler, no headers, a failed build: the op path
        if _State.mode == "cpp":
            raise RuntimeError(f"{ENV}=cpp: the AION C++ kernel could not be built: {error}") from error
        warnings.warn(f"aion_pytorch: the C++ training kernel could not be built ({type(error).__name__}: "
                      f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); using the "
                      f"op path (set {ENV}=ops to silence this)", RuntimeWarning, stacklevel=3)
        return False


def _notice_first_build() -> None:
    # The first build takes 40 s or more inside the first training step: say so, once per machine.
    try:
        from torch.utils.cpp_extension import _get_build_directory

        folder = _get_build_directory(_name(), verbose=False)
    except Exception:  # noqa: BLE001 - a private helper: without it, no notice
        return
    if not os.path.exists(os.path.join(folder, f"{_name()}.so")):
        warnings.warn(f"aion_pytorch: compiling the C++ training kernel once for this machine (40 s or more; "
                      f"cached in {folder}; {ENV}=ops skips it)", UserWarning, stacklevel=4)


def _register_fakes() -> None:
    def forward_fake(x, y, x_norm, alpha0, beta, ratio_ema, step_count, nonfinite_count, update, write_state,
                     eps, gamma):
        acc = torch.float64 if torch.float64 in {t.dtype for t in (x, y, x_norm) if t is not None} else torch.float32
        if x is None or x.dtype == y.dtype:
            out_dtype = y.dtype
        else:
            out_dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
        rows = y.shape[:-1].numel()
        return [torch.empty(y.shape, dtype=out_dtype, device=y.device),
                y.new_empty((2, rows) if update else (0,), dtype=acc), y.new_empty((5,), dtype=acc),
                y.new_empty((), dtype=torch.float32), y.new_empty((), dtype=torch.int32),
                y.new_empty((), dtype=torch.int32), y.new_empty((), dtype=acc), y.new_empty((), dtype=acc)]

    def backward_fake(dout, y, x_ref, rows, sc, has_x, x_ref_is_x):
        ratio = rows.numel() > 0
        return [torch.empty_like(y), torch.empty_like(x_ref) if ratio else None,
                sc.new_empty(()), sc.new_empty(())]

    torch.library.register_fake("aion_kernels::train_forward", forward_fake)
    torch.library.register_fake("aion_kernels::train_backward", backward_fake)


def ops():
    """The loaded extension: ``train_forward`` and ``train_backward``, also ``torch.ops.aion_kernels.*``."""
    return _State.module


def usable(x, y, x_norm, replica_mean) -> bool:
    """Whether the C++ kernel takes this eager training call (host-side checks only)."""
    if _State.mode == "ops" or replica_mean is not None or _State.module is False:
        return False
    for t in (x, y, x_norm):
        if t is not None and (type(t) is not torch.Tensor or t.device.type != "cpu"):
            return False
    return load() is not None
