// The expanded form of helix_attention's local attention (CPU; the op's contract: helix_attention.hpp).
//
// The absorbed form scores each (query, key) pair against the key's R + P wide latent row and takes the
// latent as the value: 2·H·(2R + P) FLOPs per pair. The expanded form up-projects the keys a call reads once
// (k_nope[s, h] = W_UK[h] c[s]: [S, H, Dn]; with W_UV before the exchange also v[s, h] = W_UV[h] c[s]:
// [S, H, Dv]) and scores q_nope | q_pe against k_nope | k_pe: 2·H·(Dn + P + W) per pair plus
// 2·S·H·R·(Dn [+ Dv]) for the up-projection. With W = R (latent exchange) the values stay the latent rows,
// so only the score cost falls. Both forms give the same o and the same exact LSE (the softmax is over the
// same scores), so the Helix merge across CP ranks is unchanged. Which one runs is decided per call by
// attention_form_cost (visible pairs counted from the positions, the costs as executed: see the .cpp);
// decode (one token per sequence) never pays for the up-projection, so it stays absorbed. Both forms run at
// about the same FLOP rate on Zen 4 (docs/performance.md §9.4), so W = Dv pays from ~170 visible pairs per key
// read (prefill chunks of a few hundred tokens); W = R does not pay at DeepSeek's shapes (its float32 GEMMs run at half
// the kernel's rate).
#pragma once

#include <cstdint>
#include <string_view>

#include "helix/helix_attention.hpp"

namespace helix {

enum class AttentionForm : uint8_t { Auto, Absorbed, Expanded };

// Forces a form in this process (tests, benchmarks; "auto" by default). Expanded runs whenever a call brings
// q_expanded and w_uk (any T, decode included); a call without them is absorbed whatever the setting.
void set_attention_form(AttentionForm form);
AttentionForm attention_form();
std::string_view attention_form_name(AttentionForm form);
// "auto", "absorbed" or "expanded"; throws ArgumentError naming argument `arg` otherwise.
AttentionForm parse_attention_form(std::string_view name, const char* arg);

// Heads whose keys one linear_cpu call up-projects (the latents [S, R] are packed once per call): chosen from S
// so that the group's rows [S, g, (Dv +) Dn] float32 stay near 32 MB, at most H. set_expanded_head_group(g)
// forces g (clamped to H) for tests and benchmarks; 0 restores the choice.
void set_expanded_head_group(int64_t heads);
int64_t expanded_head_group(const HelixAttentionParams& p, int64_t S);

// FLOPs of the local attention of one call in each form (the terms above; the visible pairs counted from
// kv_pos and q_pos over this rank's shard).
struct AttentionFormCost {
  double absorbed = 0, expanded = 0;
};
AttentionFormCost attention_form_cost(const HelixAttentionParams& p);

// The form helix_attention_cpu runs for p: the forced one, else the cheaper by attention_form_cost; Absorbed
// when p has no q_expanded / w_uk.
AttentionForm choose_attention_form(const HelixAttentionParams& p);

// The local attention in the expanded form: o [T, H, W] float32 (W = Dv: projected by W_UV, W = R: latent
// space, as the absorbed form's o_part), lse [T, H] natural log (-inf and o = 0 where no key is visible).
// Needs p.q_expanded, p.w_uk, p.Dn; the appended rows already in the pool.
void expanded_attention_cpu(const HelixAttentionParams& p, float* o, float* lse);

}  // namespace helix
