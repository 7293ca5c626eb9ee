// adamw.h: the scalars of an AdamW step, computed once on the host and shared by both backends (and
// both AdamW steps), so that the CPU and the GPU start every update from the same bits.
#pragma once
#include <cmath>

namespace qlora {

// Each rounded to float once, in this order.
struct AdamWConstants {
  float grad_scale;
  float decay;  // 1 - lr * weight_decay
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;  // lr / bias_correction1
  float sqrt_bc2;   // sqrt(bias_correction2)
  float eps;
};

inline AdamWConstants adamw_constants(float lr, float beta1, float beta2, float eps, float weight_decay,
                                      float bias_correction1, float bias_correction2, float grad_scale) {
  AdamWConstants c;
  c.grad_scale = grad_scale;
  float lr_wd = lr * weight_decay;
  c.decay = 1.0f - lr_wd;
  c.beta1 = beta1;
  c.one_minus_beta1 = 1.0f - beta1;
  c.beta2 = beta2;
  c.one_minus_beta2 = 1.0f - beta2;
  c.step_size = lr / bias_correction1;
  c.sqrt_bc2 = std::sqrt(bias_correction2);
  c.eps = eps;
  return c;
}

}  // namespace qlora
