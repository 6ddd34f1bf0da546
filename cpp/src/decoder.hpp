// The decoder step of one rank, written once against a Backend (DESIGN.md §3): embedding, every layer's
// attention block (norms, projections, RoPE, W_UK absorb, helix_attention, W_UV, o_proj) and FFN block
// (dense SwiGLU MLP, or router + routed experts + shared experts), each followed by its all-reduce and
// residual add, then the final norm of the logit rows, the vocabulary-sharded lm_head and the all-gather.
#pragma once

#include <map>
#include <string>

#include "helix/backend.hpp"
#include "helix/engine_config.hpp"
#include "helix/tensor.hpp"

namespace helix {

// The weights of this rank, stored by the backend (views of its memory), by name (expected_weight_shapes).
using WeightViews = std::map<std::string, TensorView>;

// Runs a validated, committed step: logits [in.L, vocab_size] f32 (host), identical on every rank, and
// hidden [in.H, hidden_size] f32 (host; in.H = 0: unused): the hidden rows after the final norm.
void run_decoder(Backend& b, const EngineConfig& c, const WeightViews& weights, const StepInput& in, float* logits,
                 float* hidden, EngineTimings& timings);

// Runs a validated, committed step of the MTP layer (Engine::mtp_step) on its own table and pool: hidden
// [T, hidden_size] f32 (host) with the step's tokens as the next tokens; g [in.L, hidden_size] and logits
// [in.L, vocab_size] f32 (host), identical on every rank.
void run_mtp(Backend& b, const EngineConfig& c, const WeightViews& weights, const StepInput& in, const float* hidden,
             float* g, float* logits, EngineTimings& timings);

}  // namespace helix
