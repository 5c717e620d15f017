// Only the dispatcher is used, no clr_ext symbol: the op must still be registered.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

#include "math/schedule.h"

int main() {
  const bool found = c10::Dispatcher::singleton().findSchema({"clr_ext::cyclic_sgd_", ""}).has_value();
  clr_shape s = {2000.0, 2000.0, 1.0, 1.0, CLR_MODE_TRIANGULAR};
  clr_bounds b = {0.001, 0.006, 0.85, 0.95};
  const clr_point p = clr_schedule(2000, &s, &b);
  std::printf("clr_ext::cyclic_sgd_ registered: %s; lr at the first peak: %g\n", found ? "yes" : "no", p.lr);
  return found && p.lr > 0.0059 && p.lr < 0.0061 ? 0 : 1;
}
