// The ops' registration with the dispatcher (torch.ops.clr_ext): each schema once, its
// CPU and CUDA implementations, and the autograd keys' kernels, so that a call through
// the dispatcher bumps the autograd version counter of every tensor its schema marks as
// written, as torch's own in-place ops do: a backward through a tensor a step changed
// then raises "modified by an inplace operation" instead of using a stale saved value.
// (The eager fast path, op/python.cpp, bumps the counters itself.)
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <vector>

#include "adamw_op.h"
#include "sgd_op.h"

namespace {

// The ADInplaceOrView kernel of both ops: every tensor of the Tensor(a!)[] inputs gets its
// version bumped after the step ran. (torch's autogradNotImplementedInplaceOrViewFallback
// bumps mutable outputs only, and these ops return nothing.)
void bump_written_inputs(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const c10::FunctionSchema& schema = op.schema();
  const size_t n_args = schema.arguments().size();
  const size_t first = stack->size() - n_args;
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < n_args; ++i) {
    if (!schema.is_mutable({c10::SchemaArgType::input, i})) continue;
    const c10::IValue& arg = (*stack)[first + i];
    if (arg.isTensorList()) {
      const c10::List<at::Tensor> list = arg.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) written.push_back(list.get(j));
    } else if (arg.isTensor()) {
      written.push_back(arg.toTensor());
    }
  }
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const at::Tensor& t : written) torch::autograd::impl::bump_version(t);
}

// The Autograd kernel of both ops: the steps have no derivative and run under no_grad, so
// it only passes the call on to ADInplaceOrView. (Without a kernel here the dispatcher's
// default autograd fallback goes straight to the backend, skipping ADInplaceOrView, and
// so does torch's autogradNotImplementedFallback.)
void below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

}  // namespace

TORCH_LIBRARY(clr_ext, m) {
  m.def(clr_ext::kCyclicSgdSchema);
  m.def(clr_ext::kCyclicAdamwSchema);
}

TORCH_LIBRARY_IMPL(clr_ext, CPU, m) {
  m.impl("cyclic_sgd_", &clr_ext::scheduled_sgd<c10::DeviceType::CPU>);
  m.impl("cyclic_adamw_", &clr_ext::scheduled_adamw<c10::DeviceType::CPU>);
}

#ifdef CLR_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(clr_ext, CUDA, m) {
  m.impl("cyclic_sgd_", &clr_ext::scheduled_sgd<c10::DeviceType::CUDA>);
  m.impl("cyclic_adamw_", &clr_ext::scheduled_adamw<c10::DeviceType::CUDA>);
}
#endif

TORCH_LIBRARY_IMPL(clr_ext, Autograd, m) {
  m.impl("cyclic_sgd_", torch::CppFunction::makeFromBoxedFunction<&below_autograd>());
  m.impl("cyclic_adamw_", torch::CppFunction::makeFromBoxedFunction<&below_autograd>());
}

TORCH_LIBRARY_IMPL(clr_ext, ADInplaceOrView, m) {
  m.impl("cyclic_sgd_", torch::CppFunction::makeFromBoxedFunction<&bump_written_inputs>());
  m.impl("cyclic_adamw_", torch::CppFunction::makeFromBoxedFunction<&bump_written_inputs>());
}
