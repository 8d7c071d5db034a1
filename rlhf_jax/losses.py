"""Losses of every stage. Each returns `(sum, count)`, never a mean.

Returning the unreduced sum and its denominator lets microbatch accumulation and multi-device
reduction produce exact token means: mean = sum(sums) / sum(counts), whatever the split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import advantages


def next_token_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                    mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed cross-entropy -sum_t m_t log p(x_{t+1} | x_<=t) and the number of counted tokens.

  `mask_BxT` selects which targets count (0 for padding, prompts in SFT, or the tail of a batch).
  """
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), targets_BxT)
  mask_BxT = mask_BxT.astype(jnp.float32)
  return jnp.sum(nll_BxT * mask_BxT), jnp.sum(mask_BxT)


def preference_contrastive_loss(logp_BxT: jax.Array, logp_flipped_BxT: jax.Array,
                                mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed -sum_t m_t log sigmoid(log p(x_t | c) - log p(x_t | c')) and the number of counted tokens.

  For a preference-conditioned LM (Korbak et al. 2023's conditional training, here with a
  preference embedding c): every token must be more likely under its own preference c than under
  the opposite one c'. Conditional training's likelihood alone lets the model ignore c wherever the
  text does not need it; this Bradley-Terry-style contrast between the two conditionings is the
  "contrastive loss" that makes the preference embedding carry the labeler's distinction.
  """
  mask_BxT = mask_BxT.astype(jnp.float32)
  return jnp.sum(-jax.nn.log_sigmoid(logp_BxT - logp_flipped_BxT) * mask_BxT), jnp.sum(mask_BxT)


def bradley_terry_loss(r_chosen_B: jax.Array, r_rejected_B: jax.Array,
                       mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed pairwise loss -log sigmoid(r_chosen - r_rejected) and the number of pairs counted.

  The Bradley-Terry model (Bradley & Terry 1952) says P(chosen > rejected) = sigmoid(r_c - r_r);
  this is its negative log-likelihood, the reward-model loss of Christiano et al. 2017 (eq. 1) and
  Ouyang et al. 2022 (eq. 1, for one pair per prompt). `log_sigmoid` keeps it finite for large
  margins.
  """
  mask_B = jnp.ones_like(r_chosen_B) if mask_B is None else mask_B.astype(jnp.float32)
  nll_B = -jax.nn.log_sigmoid(r_chosen_B - r_rejected_B)
  return jnp.sum(nll_B * mask_B), jnp.sum(mask_B)


def binary_rating_loss(logit_B: jax.Array, label_B: jax.Array,
                       mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed binary cross-entropy of a scalar logit against 0/1 labels (e.g. great vs other).

  -[y log sigmoid(s) + (1 - y) log sigmoid(-s)], written with log_sigmoid for stability.
  """
  mask_B = jnp.ones_like(logit_B) if mask_B is None else mask_B.astype(jnp.float32)
  y_B = label_B.astype(jnp.float32)
  nll_B = -(y_B * jax.nn.log_sigmoid(logit_B) + (1.0 - y_B) * jax.nn.log_sigmoid(-logit_B))
  return jnp.sum(nll_B * mask_B), jnp.sum(mask_B)


def ordinal_thresholds(num_levels: int) -> jax.Array:
  """Fixed cut points theta_1..theta_{N-1} = k - N/2 of the ordinal rating loss: unit-spaced, centred.

  Fixing them costs nothing: the scalar head's own scale and bias learn how far apart levels are
  in reward units, and the reward stays one number (no extra parameters to carry around).
  """
  return jnp.arange(1, num_levels, dtype=jnp.float32) - num_levels / 2


def ordinal_rating_loss(score_B: jax.Array, level_B: jax.Array, num_levels: int,
                        mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed negative log-likelihood of ratings 0..N-1 under the ordered-logit model.

  The cumulative-link ("proportional odds") model of McCullagh (1980, eq. 2.1) with the reward as
  the latent score: P(y >= k) = sigmoid(s - theta_k) for k = 1..N-1 (theta from
  `ordinal_thresholds`), so P(y = k) = sigmoid(s - theta_k) - sigmoid(s - theta_{k+1}) with
  P(y >= 0) = 1 and P(y >= N) = 0. For interior levels the difference is written as
  sigmoid(a) sigmoid(-b) (1 - exp(b - a)) with a = s - theta_k, b = s - theta_{k+1}, so its log
  is finite for any score. With N = 2 this is binary cross-entropy with the logit s.
  """
  if num_levels < 2:
    raise ValueError(f"num_levels must be >= 2, got {num_levels}")
  mask_B = jnp.ones_like(score_B) if mask_B is None else mask_B.astype(jnp.float32)
  theta = ordinal_thresholds(num_levels)
  # Pad the cut points with -inf / +inf so levels 0 and N-1 use the same formula's limits.
  theta = jnp.concatenate([jnp.array([-jnp.inf]), theta, jnp.array([jnp.inf])])
  level_B = jnp.clip(level_B.astype(jnp.int32), 0, num_levels - 1)
  a_B = score_B - theta[level_B]  # +inf at level 0
  b_B = score_B - theta[level_B + 1]  # -inf at level N-1
  log_upper_B = jnp.where(level_B == 0, 0.0, jax.nn.log_sigmoid(jnp.where(level_B == 0, 0.0, a_B)))
  log_lower_B = jnp.where(level_B == num_levels - 1, 0.0,
                          jax.nn.log_sigmoid(-jnp.where(level_B == num_levels - 1, 0.0, b_B)))
  interior_B = (level_B > 0) & (level_B < num_levels - 1)
  gap = jnp.log1p(-jnp.exp(-1.0))  # b - a = theta_k - theta_{k+1} = -1 for unit-spaced cut points
  nll_B = -(log_upper_B + log_lower_B + jnp.where(interior_B, gap, 0.0))
  return jnp.sum(nll_B * mask_B), jnp.sum(mask_B)


def ordinal_expected_level(score_B: jax.Array, num_levels: int) -> jax.Array:
  """E[y] = sum_k P(y >= k) under the ordered-logit model: the predicted rating, in 0..N-1."""
  return jnp.sum(jax.nn.sigmoid(score_B[:, None] - ordinal_thresholds(num_levels)), axis=-1)


def squared_error_loss(pred_B: jax.Array, target_B: jax.Array,
                       mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed (pred - target)^2: rating regression, the reward read as the rating itself."""
  mask_B = jnp.ones_like(pred_B) if mask_B is None else mask_B.astype(jnp.float32)
  return jnp.sum((pred_B - target_B.astype(jnp.float32)) ** 2 * mask_B), jnp.sum(mask_B)


def last_token_value(scalar_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """The scalar at each row's last real token (mask 1), never at padding after it.

  Reward models read their score there: it is the only position that has seen the whole response.
  Rows are assumed right-padded or left-padded; either way the last 1 in the mask is used.
  """
  return jnp.take_along_axis(scalar_BxT, advantages.last_token_index(mask_BxT)[:, None], axis=-1)[:, 0]


def ppo_policy_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, adv_BxT: jax.Array, mask_BxT: jax.Array,
                    clip_eps: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed clipped surrogate of PPO (Schulman et al. 2017, eq. 7), negated to be minimised:

    L = -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t),   rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)

  over the response's real tokens.
  """
  mask = mask_BxT.astype(jnp.float32)
  ratio_BxT = jnp.exp(logp_BxT - old_logp_BxT)
  unclipped = ratio_BxT * adv_BxT
  clipped = jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps) * adv_BxT
  return jnp.sum(-jnp.minimum(unclipped, clipped) * mask), jnp.sum(mask)


def ppo_value_loss(values_BxT: jax.Array, old_values_BxT: jax.Array, returns_BxT: jax.Array, mask_BxT: jax.Array,
                   clip_eps: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed clipped value loss (Huang et al. 2024, detail 11; the lm-human-preferences code):

    L = 1/2 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)
  """
  mask = mask_BxT.astype(jnp.float32)
  clipped_BxT = old_values_BxT + jnp.clip(values_BxT - old_values_BxT, -clip_eps, clip_eps)
  loss_BxT = 0.5 * jnp.maximum((values_BxT - returns_BxT) ** 2, (clipped_BxT - returns_BxT) ** 2)
  return jnp.sum(loss_BxT * mask), jnp.sum(mask)


# ---------------------------------------------------------------------------------------------
# Direct preference optimization and its relatives. Inputs are per-sequence log-probabilities of
# the response (summed over its tokens, `sampling.response_logprobs(...).sum(-1)`), [B] each.


def _mask_or_ones(x_B: jax.Array, mask_B: jax.Array | None) -> jax.Array:
  return jnp.ones_like(x_B) if mask_B is None else mask_B.astype(jnp.float32)


def dpo_loss(logp_chosen_B: jax.Array, logp_rejected_B: jax.Array, ref_chosen_B: jax.Array, ref_rejected_B: jax.Array,
             beta: float | jax.Array, label_smoothing: float | jax.Array = 0.0,
             mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed DPO loss (Rafailov et al. 2023, eq. 7):

    -log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

  With label_smoothing eps > 0 it is conservative DPO (Mitchell 2023): the labels are assumed
  flipped with probability eps, -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
  """
  h_B = (logp_chosen_B - ref_chosen_B) - (logp_rejected_B - ref_rejected_B)
  nll_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h_B) - label_smoothing * jax.nn.log_sigmoid(-beta * h_B)
  mask_B = _mask_or_ones(h_B, mask_B)
  return jnp.sum(nll_B * mask_B), jnp.sum(mask_B)


def ipo_loss(logp_chosen_B, logp_rejected_B, ref_chosen_B, ref_rejected_B, tau: float | jax.Array,
             mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed IPO loss (Azar et al. 2023, eq. 17): (h - 1 / (2 tau))^2 with h the DPO log-ratio
  margin; it regresses the margin to a finite target instead of pushing it to infinity."""
  h_B = (logp_chosen_B - ref_chosen_B) - (logp_rejected_B - ref_rejected_B)
  mask_B = _mask_or_ones(h_B, mask_B)
  return jnp.sum((h_B - 1.0 / (2.0 * tau)) ** 2 * mask_B), jnp.sum(mask_B)


def kto_loss(logp_B: jax.Array, ref_logp_B: jax.Array, desirable_B: jax.Array, kl_reference: jax.Array,
             beta: float | jax.Array, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed KTO loss on unpaired examples (Ethayarajh et al. 2024, eq. 8):

    desirable:    lambda_D (1 - sigmoid(beta (r - z0)))
    undesirable:  lambda_U (1 - sigmoid(beta (z0 - r)))

  with r = log pi(y|x) - log pi_ref(y|x) and z0 the reference point, an estimate of
  KL(pi || pi_ref) (e.g. the batch mean of r on mismatched pairs, clipped at 0), which carries no
  gradient.
  """
  r_B = logp_B - ref_logp_B
  z0 = jax.lax.stop_gradient(jnp.maximum(kl_reference, 0.0))
  good = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r_B - z0)))
  bad = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r_B)))
  mask_B = _mask_or_ones(r_B, mask_B)
  return jnp.sum(jnp.where(desirable_B, good, bad) * mask_B), jnp.sum(mask_B)


def orpo_odds_ratio_loss(mean_logp_chosen_B: jax.Array, mean_logp_rejected_B: jax.Array,
                         mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed odds-ratio term of ORPO (Hong et al. 2024, eqs. 6-7), no reference model:

    -log sigmoid(log odds(y_w) - log odds(y_l)),   odds(y) = P(y) / (1 - P(y)),

  with P(y) = exp(mean token log-prob) (length-normalized, as in the paper). ORPO's full loss adds
  the SFT loss of y_w: `next_token_loss` + lambda * this.
  """
  def log_odds(mean_logp_B):
    mean_logp_B = jnp.minimum(mean_logp_B, -1e-6)  # P < 1, so log(1 - P) is finite
    return mean_logp_B - jnp.log1p(-jnp.exp(mean_logp_B))
  z_B = log_odds(mean_logp_chosen_B) - log_odds(mean_logp_rejected_B)
  mask_B = _mask_or_ones(z_B, mask_B)
  return jnp.sum(-jax.nn.log_sigmoid(z_B) * mask_B), jnp.sum(mask_B)


def simpo_loss(logp_chosen_B: jax.Array, logp_rejected_B: jax.Array, len_chosen_B: jax.Array,
               len_rejected_B: jax.Array, beta: float | jax.Array, gamma: float | jax.Array,
               mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed SimPO loss (Meng et al. 2024, eq. 6), no reference model:

    -log sigmoid(beta / |y_w| log pi(y_w) - beta / |y_l| log pi(y_l) - gamma)
  """
  z_B = (beta * logp_chosen_B / jnp.maximum(len_chosen_B, 1) - beta * logp_rejected_B / jnp.maximum(len_rejected_B, 1)
         - gamma)
  mask_B = _mask_or_ones(z_B, mask_B)
  return jnp.sum(-jax.nn.log_sigmoid(z_B) * mask_B), jnp.sum(mask_B)


# ---------------------------------------------------------------------------------------------
# Implicit Language Q-Learning (Snell et al. 2022, "Offline RL for Natural Language Generation with
# Implicit Language Q Learning"): token-level Q-learning on offline data, the state being the
# prefix and the action the next token. ILQL learns Q(s, a) and V(s) with
#   Q loss    (Q(s_t, a_t) - (r_t + gamma V_hat(s_{t+1})))^2                       (eq. 2, first term)
#   V loss    L_2^tau(Q_hat(s_t, a_t) - V(s_t)),  L_2^tau(u) = |tau - 1(u < 0)| u^2   (expectile, eq. 2)
#   CQL loss  -log softmax(Q(s_t, .))[a_t], pushing down Q of tokens not in the data   (eq. 3)
# with V_hat / Q_hat the target networks (`advantages.q_targets`: V after the last token is 0).


def expectile_loss(diff: jax.Array, tau: float | jax.Array) -> jax.Array:
  """L_2^tau(u) = |tau - 1(u < 0)| u^2, elementwise (Kostrikov et al. 2021, IQL eq. 5)."""
  weight = jnp.where(diff < 0, 1.0 - tau, tau)
  return weight * diff ** 2


def ilql_losses(q_BxT: jax.Array, v_BxT: jax.Array, target_q_BxT: jax.Array, target_v_BxT: jax.Array,
                q_all_BxTxV: jax.Array, actions_BxT: jax.Array, rewards_BxT: jax.Array, mask_BxT: jax.Array, *,
                gamma: float | jax.Array, tau: float | jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
  """The three ILQL losses as (sum, count) over real tokens.

  `q_BxT` is Q(s_t, a_t) of the taken token, `q_all_BxTxV` Q(s_t, .) over the vocabulary (for the
  CQL term), `v_BxT` V(s_t); `target_*` come from the target networks.
  """
  mask = mask_BxT.astype(jnp.float32)
  count = jnp.sum(mask)
  q_loss = jnp.sum((q_BxT - advantages.q_targets(rewards_BxT, target_v_BxT, mask_BxT, gamma)) ** 2 * mask)
  v_loss = jnp.sum(expectile_loss(jax.lax.stop_gradient(target_q_BxT) - v_BxT, tau) * mask)
  log_softmax = jax.nn.log_softmax(q_all_BxTxV, axis=-1)
  cql = -jnp.take_along_axis(log_softmax, actions_BxT[..., None].astype(jnp.int32), -1)[..., 0]
  return {"q": (q_loss, count), "v": (v_loss, count), "cql": (jnp.sum(cql * mask), count)}
