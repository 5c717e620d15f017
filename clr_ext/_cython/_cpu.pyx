# distutils: language = c++
# cython: boundscheck=False, wraparound=False, cdivision=True
"""The Cython fallback: the same schedule and update as clr_ext._C, through the
same headers (csrc/math/schedule.h, the rules' element bodies in csrc/math/, the loops
of csrc/cpu/), reaching
CPU tensors through their memory. It needs no torch C++ headers, no BLAS and no
Fortran; it is what runs where the torch extension cannot be built.

The caller (clr_ext.backends) has already checked every tensor: same dtype,
shape and device, CPU, dense and laid out alike. Threads come from OpenMP.
"""
from libc.stdint cimport int32_t, int64_t, uintptr_t
from libcpp.vector cimport vector


cdef extern from "math/schedule.h" nogil:
    ctypedef struct clr_chain:
        pass
    ctypedef struct clr_shape:
        double step_size_up
        double step_size_down
        double gamma
        double custom_scale
        int32_t mode
        int32_t phases
        double phase_end[3]
        clr_chain chain
    ctypedef struct clr_bounds:
        double base_lr
        double max_lr
        double base_momentum
        double max_momentum
        double min_lr
    ctypedef struct clr_point:
        double lr
        double momentum
    clr_point clr_schedule(int64_t iteration, const clr_shape* shape, const clr_bounds* b)
    const char* clr_chain_read(const double* values, int64_t n, clr_chain* out)
    int CLR_MODE_COUNT
    int CLR_MODE_CHAIN
    int CLR_MODE_ONE_CYCLE_COS
    int CLR_MODE_ONE_CYCLE_LINEAR


cdef extern from "cpu/multi_tensor.h" namespace "clr_cpu" nogil:
    # A bucket's spans and the prefix sums of their sizes (one span per param with elements).
    cdef cppclass SpanList[S]:
        void reserve(size_t capacity)
        void add(const S& span)
    # The whole bucket on up to num_threads OpenMP threads, through the rule's loops (the
    # span and args types pick the rule: cpu/sgd_cpu.h, cpu/adamw_cpu.h).
    void run_bucket_openmp[S, A](int32_t dtype, const SpanList[S]& bucket, const A& a, int num_threads)


cdef extern from "math/sgd_update.h" nogil:
    int CLR_MOMENTUM_NONE
    int CLR_MOMENTUM_FIRST
    int CLR_MOMENTUM_STEADY


cdef extern from "cpu/sgd_cpu.h" namespace "clr_cpu" nogil:
    cdef struct Span:
        void* param
        void* grad
        void* momentum_buffer
        int64_t numel
    cdef struct StepArgs:
        double lr
        double momentum
        double dampening
        double weight_decay
        int32_t momentum_state
        int32_t nesterov
        int32_t maximize
        int32_t unscale
        double grad_scale


cdef extern from "cpu/adamw_cpu.h" namespace "clr_cpu" nogil:
    cdef struct VectorSqrt:
        pass
    cdef struct AdamwSpan:
        void* param
        void* grad
        void* exp_avg
        void* exp_avg_sq
        void* max_exp_avg_sq
        int64_t numel
        double step_size
        double bias_correction2_sqrt
    cdef struct AdamwArgs:
        double lr
        double beta1
        double beta2
        double eps
        double weight_decay
        int32_t amsgrad
        int32_t maximize
        int32_t unscale
        double grad_scale
        const VectorSqrt* vsqrt
        int32_t fused_width
    void adamw_prepare_span(AdamwSpan* span, float* state_step, const AdamwArgs& a)
    const VectorSqrt* torch_vector_sqrt()


ctypedef fused RuleArgs:
    StepArgs
    AdamwArgs


cdef inline clr_shape _shape(shape, int mode) except *:
    """The op's ``shape`` list as csrc/op/check.cpp's shape_from reads it."""
    if mode < 0 or mode >= CLR_MODE_COUNT:
        raise ValueError("unknown schedule mode %d" % mode)
    cdef clr_shape s
    cdef int i
    cdef vector[double] values
    cdef const char* error
    s.mode = mode
    if mode == CLR_MODE_CHAIN:
        values = shape
        error = clr_chain_read(values.data(), values.size(), &s.chain)
        if error != NULL:
            raise ValueError("schedule chain: " + error.decode())
        return s
    if len(shape) != 4:
        raise ValueError("shape must have 4 values, got %d" % len(shape))
    s.step_size_up = 0.0
    s.step_size_down = 0.0
    s.gamma = 1.0
    s.custom_scale = 1.0
    s.phases = 0
    s.phase_end[0] = s.phase_end[1] = s.phase_end[2] = 0.0
    if mode == CLR_MODE_ONE_CYCLE_COS or mode == CLR_MODE_ONE_CYCLE_LINEAR:
        if shape[3] != 2.0 and shape[3] != 3.0:
            raise ValueError("a 1cycle schedule has 2 or 3 phases, got %r" % shape[3])
        if shape[0] == 0.0:
            raise ValueError("the first 1cycle phase has no length (pct_start * total_steps == 1)")
        s.phases = <int32_t>shape[3]
        for i in range(s.phases):
            s.phase_end[i] = shape[i]
        return s
    if not shape[0] > 0.0:
        raise ValueError("step_size_up must be positive")
    s.step_size_up = shape[0]
    s.step_size_down = shape[1]
    s.gamma = shape[2]
    s.custom_scale = shape[3]
    return s


cdef inline clr_bounds _bounds(bounds, int mode) except *:
    cdef clr_bounds b
    if mode == CLR_MODE_CHAIN:  # a chain carries each group's values in its shape
        if len(bounds) != 0:
            raise ValueError("with a schedule chain, bounds must be empty")
        b.base_lr = b.max_lr = b.base_momentum = b.max_momentum = b.min_lr = 0.0
        return b
    if len(bounds) != 4 and len(bounds) != 5:
        raise ValueError("bounds must be [base_lr, max_lr, base_momentum, max_momentum(, min_lr)]")
    b.base_lr = bounds[0]
    b.max_lr = bounds[1]
    b.base_momentum = bounds[2]
    b.max_momentum = bounds[3]
    b.min_lr = bounds[4] if len(bounds) == 5 else bounds[0]
    return b


cdef inline double _scale(value) except? -1.0:
    """A float64 CPU tensor read in place (float() of a tensor costs ~1 us), else float(value)."""
    if isinstance(value, float):
        return value
    if value.element_size() == 8 and value.is_floating_point() and not value.is_cuda and not value.is_complex():
        return (<double*><uintptr_t>value.data_ptr())[0]
    return float(value)


cdef inline int _set_step_scalars(RuleArgs* a, double lr, lr_scale, grad_scale, bint maximize) except -1:
    """What every rule's args carry of the step besides its own scalars (cpu/aten_ranges.h's
    set_step_scalars for clr_ext._C): the LR times lr_scale, maximize, AMP's scale."""
    a.lr = lr * _scale(lr_scale) if lr_scale is not None else lr
    a.maximize = maximize
    a.unscale = grad_scale is not None
    a.grad_scale = float(grad_scale) if grad_scale is not None else 1.0
    return 0


cdef inline int64_t _iteration(iteration):
    """The int64 counter tensor's value, read in place."""
    return (<int64_t*><uintptr_t>iteration.data_ptr())[0]


cdef inline clr_point _point(int64_t iteration, bounds, shape, int mode) except *:
    """The schedule at `iteration` from the op's bounds, shape and mode."""
    cdef clr_shape s = _shape(shape, mode)
    cdef clr_bounds b = _bounds(bounds, mode)
    return clr_schedule(iteration, &s, &b)


def schedule(long long iteration, double base_lr, double max_lr, double base_momentum,
             double max_momentum, double step_size_up, double step_size_down, int mode,
             double gamma, double custom_scale=1.0):
    """(lr, momentum) that the step with this 0-based iteration uses (csrc/math/schedule.h)."""
    return schedule_at(iteration, [base_lr, max_lr, base_momentum, max_momentum],
                       [step_size_up, step_size_down, gamma, custom_scale], mode)


def schedule_at(long long iteration, bounds, shape, int mode):
    """Any schedule from the op's own arguments (bounds, shape, mode)."""
    cdef clr_point p = _point(iteration, bounds, shape, mode)
    return p.lr, p.momentum


def cyclic_sgd_(int dtype_code, list params, list grads, list momentum_buffers, iteration,
                bounds, shape, int mode, double momentum, double dampening, double weight_decay,
                bint nesterov, bint maximize, bint cycle_momentum, bint first_step,
                grad_scale=None, int num_threads=1, lr_scale=None):
    """One step over a bucket of same-dtype CPU tensors; the iteration is read from
    the int64 counter tensor `iteration`, which is not advanced here. lr_scale (a float or
    a one-element tensor) multiplies the schedule's LR."""
    cdef Py_ssize_t n = len(params)
    if len(grads) != n or (momentum_buffers and len(momentum_buffers) != n):
        raise ValueError("params, grads and momentum_buffers differ in length")
    cdef clr_point point = _point(_iteration(iteration), bounds, shape, mode)

    cdef StepArgs a
    _set_step_scalars(&a, point.lr, lr_scale, grad_scale, maximize)
    a.momentum = point.momentum if cycle_momentum else momentum
    a.dampening = dampening
    a.weight_decay = weight_decay
    a.nesterov = nesterov
    # torch.optim.SGD leaves its buffers alone in any step whose momentum is 0.
    if not momentum_buffers or a.momentum == 0.0:
        a.momentum_state = CLR_MOMENTUM_NONE
    elif first_step:
        a.momentum_state = CLR_MOMENTUM_FIRST
    else:
        a.momentum_state = CLR_MOMENTUM_STEADY
    cdef bint use_buffers = a.momentum_state != CLR_MOMENTUM_NONE

    cdef SpanList[Span] bucket
    bucket.reserve(n)
    cdef Span sp
    cdef Py_ssize_t i
    cdef int64_t numel
    for i in range(n):
        p = params[i]
        numel = p.numel()
        if numel == 0:
            continue
        sp.param = <void*><uintptr_t>p.data_ptr()
        sp.grad = <void*><uintptr_t>grads[i].data_ptr()
        sp.momentum_buffer = <void*><uintptr_t>momentum_buffers[i].data_ptr() if use_buffers else NULL
        sp.numel = numel
        bucket.add(sp)

    cdef int32_t dtype = dtype_code
    with nogil:
        run_bucket_openmp(dtype, bucket, a, num_threads)


# ------------------------------------------------------------------------------ AdamW
# The same loops as clr_ext._C's cyclic_adamw_cpu_: csrc/math/adamw_update.h, csrc/cpu/adamw_cpu.h.

def cyclic_adamw_(int dtype_code, list params, list grads, list exp_avgs, list exp_avg_sqs,
                  list max_exp_avg_sqs, list state_steps, iteration, bounds, shape, int mode,
                  double beta1, double beta2, double eps, double weight_decay, bint amsgrad,
                  bint maximize, bint cycle_momentum, grad_scale=None, found_inf=None,
                  int num_threads=1, int fused_width=0, lr_scale=None):
    """One AdamW step over a bucket of same-dtype CPU tensors, as clr_ext._C's
    cyclic_adamw_cpu_ (same loops, same bits): lr and, with cycle_momentum, beta1 from the
    schedule at the int64 counter `iteration` (not advanced here); each float32 tensor of
    `state_steps` is advanced by one. grad_scale / found_inf: one-element tensors or
    floats; with a non-zero found_inf (GradScaler's sum over devices) nothing changes.
    fused_width > 0 rounds as torch.optim.AdamW(fused=True) (csrc/cpu/adamw_cpu.h,
    backends.fused_adamw_width). lr_scale multiplies the schedule's LR."""
    cdef Py_ssize_t n = len(params)
    if (len(grads) != n or len(exp_avgs) != n or len(exp_avg_sqs) != n or len(state_steps) != n
            or len(max_exp_avg_sqs) != (n if amsgrad else 0)):
        raise ValueError("params, grads, exp_avgs, exp_avg_sqs, state_steps (and max_exp_avg_sqs "
                         "with amsgrad, none without) differ in length")
    if not (0.0 <= beta1 < 1.0) or not (0.0 <= beta2 < 1.0):
        raise ValueError("beta1 and beta2 must be in [0, 1), got %r and %r" % (beta1, beta2))
    if not eps >= 0.0:
        raise ValueError("eps must be non-negative, got %r" % eps)
    if not 0 <= fused_width <= 1024:
        raise ValueError("fused_width must be in [0, 1024], got %r" % fused_width)
    cdef int64_t it = _iteration(iteration)
    cdef clr_point point = _point(it, bounds, shape, mode)
    cdef double step_beta1 = point.momentum if cycle_momentum else beta1
    if not (0.0 <= step_beta1 < 1.0):
        raise ValueError("the cycled beta1 at iteration %d is %r, outside [0, 1)" % (it, step_beta1))
    # A CPU flag: reading it is free, and a skipped step changes nothing, step counts included.
    # Any non-zero value skips: GradScaler passes the sum of its per-device flags.
    if found_inf is not None and float(found_inf) != 0.0:
        return

    cdef AdamwArgs a
    _set_step_scalars(&a, point.lr, lr_scale, grad_scale, maximize)
    a.beta1 = step_beta1
    a.beta2 = beta2
    a.eps = eps
    a.weight_decay = weight_decay
    a.amsgrad = amsgrad
    a.fused_width = fused_width
    # AdamW(fused=True) takes IEEE square roots, torch.sqrt (AdamW's default path) MKL's.
    a.vsqrt = NULL
    if fused_width == 0:
        a.vsqrt = torch_vector_sqrt()

    cdef SpanList[AdamwSpan] bucket
    bucket.reserve(n)
    cdef AdamwSpan sp
    cdef Py_ssize_t i
    cdef int64_t numel
    for i in range(n):
        # Once per param, before any thread runs; params without elements count steps too.
        adamw_prepare_span(&sp, <float*><uintptr_t>state_steps[i].data_ptr(), a)
        p = params[i]
        numel = p.numel()
        if numel == 0:
            continue
        sp.param = <void*><uintptr_t>p.data_ptr()
        sp.grad = <void*><uintptr_t>grads[i].data_ptr()
        sp.exp_avg = <void*><uintptr_t>exp_avgs[i].data_ptr()
        sp.exp_avg_sq = <void*><uintptr_t>exp_avg_sqs[i].data_ptr()
        sp.max_exp_avg_sq = <void*><uintptr_t>max_exp_avg_sqs[i].data_ptr() if amsgrad else NULL
        sp.numel = numel
        bucket.add(sp)

    cdef int32_t dtype = dtype_code
    with nogil:
        run_bucket_openmp(dtype, bucket, a, num_threads)
