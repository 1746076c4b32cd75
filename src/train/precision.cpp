#include "lmtune/train/precision.h"

#include <ATen/autocast_mode.h>

namespace lmtune {

AutocastScope::AutocastScope(Precision precision, torch::Device device) {
  if (precision == Precision::kFp32) return;
  device_type_ = device.type();
  previous_enabled_ = at::autocast::is_autocast_enabled(*device_type_);
  previous_dtype_ = at::autocast::get_autocast_dtype(*device_type_);
  at::autocast::set_autocast_dtype(*device_type_,
                                   precision == Precision::kBf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::set_autocast_enabled(*device_type_, true);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!device_type_) return;
  // Leaving the outermost scope frees the low-precision copies of the weights autocast cached.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(*device_type_, previous_enabled_);
  at::autocast::set_autocast_dtype(*device_type_, previous_dtype_);
}

}  // namespace lmtune
