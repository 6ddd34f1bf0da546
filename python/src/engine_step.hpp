// The `step` binding shared by the CPU engine (bind_engine.cpp) and the CUDA engine (bind_cuda.cpp):
// both take host arrays and return host logits.
#pragma once

#include "arrays.hpp"

namespace helix::bind {

// tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L] -> logits [L, vocab_size] float32.
template <class EngineT>
nb::object engine_step(EngineT& e, nb::handle tokens, nb::handle positions, nb::handle seq_ids, nb::handle q_seq_index,
                       nb::handle logit_rows) {
  HostArray ta = to_view(tokens, "tokens"), pa = to_view(positions, "positions"), sa = to_view(seq_ids, "seq_ids"),
            ia = to_view(q_seq_index, "q_seq_index"), la = to_view(logit_rows, "logit_rows");
  HELIX_CHECK_ARG(la.view.ndim() == 1, "argument 'logit_rows' must be 1-D");
  HostArray out = new_array({la.view.dim(0), e.config().vocab_size}, DType::Float32);
  {
    nb::gil_scoped_release release;
    e.step(ta.view, pa.view, sa.view, ia.view, la.view, out.view);
  }
  return out.owner;
}

}  // namespace helix::bind
