"""transformers' BERT (PyTorch) trained by the same recipe as ours: the reference for training.

From the same weights and the same batches, `TorchReference.step` takes the update that
`bert_jax.train.steps.train_step` takes with `optim.make_optimizer`'s AdamW (no weight decay on
LayerNorm and biases, linear warmup then linear decay, global-norm clipping first), with
torch.optim.AdamW and transformers' BertForPreTraining. A test holds the two to float32
round-off over many updates; benchmarks/reference_learning_curve.py compares whole runs on real
text. Compare with dropout off: the two frameworks draw different dropout masks. Packed rows
are refused (transformers' BERT has no block-diagonal attention). Needs torch and transformers
(the `hf` extra).
"""

import numpy as np

from bert_jax.interop import hf
from bert_jax.model.config import ModelConfig
from bert_jax.train import optim


def _decays(name: str) -> bool:
    """Our weight_decay_mask in transformers' names: no decay on LayerNorm and biases."""
    return "LayerNorm" not in name and not name.endswith("bias")


def schedule_multiplier(warmup_steps: int, total_steps: int):
    """optim.learning_rate_schedule as a multiplier of the peak rate (torch's LambdaLR form)."""
    schedule = optim.learning_rate_schedule(1.0, warmup_steps, total_steps)
    return lambda step: float(schedule(step))


class TorchReference:
    """A randomly initialised transformers BertForPreTraining and its optimizer.

    `params()` gives its current weights as our parameter tree, so a run of ours can start from
    exactly the reference's initial weights.
    """

    def __init__(self, config: ModelConfig, optimizer_config, total_steps: int, seed: int = 0):
        import torch
        import transformers

        if optimizer_config.name != "adamw":
            raise ValueError(f"optimizer.name {optimizer_config.name!r}: the torch reference "
                             "trains with AdamW only (torch has no LAMB)")
        self._torch = torch
        torch.manual_seed(seed)
        self.model = transformers.BertForPreTraining(
            transformers.BertConfig(**hf.config_to_hf(config)))
        self.model.train()
        self.config = config
        named = list(self.model.named_parameters())  # tied decoder weights appear once
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if _decays(n)],
              "weight_decay": optimizer_config.weight_decay},
             {"params": [p for n, p in named if not _decays(n)], "weight_decay": 0.0}],
            lr=optimizer_config.learning_rate, betas=(optimizer_config.b1, optimizer_config.b2),
            eps=optimizer_config.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, schedule_multiplier(optimizer_config.warmup_steps, total_steps))
        self.grad_clip_norm = optimizer_config.grad_clip_norm

    def tensors(self) -> dict[str, np.ndarray]:
        """The current weights under transformers' names (copies)."""
        return {name: t.detach().numpy().copy() for name, t in self.model.state_dict().items()}

    def params(self) -> dict:
        return hf.params_from_hf(self.tensors(), self.config, with_heads=True)

    def losses(self, batch: dict, use_nsp: bool) -> dict:
        """The batch's pre-training loss and metrics, as bert_jax.train.losses defines them."""
        packed = sorted({"sequence_ids", "position_ids"} & set(batch))
        if packed:
            raise ValueError(f"batch has {packed}: packed rows have no transformers reference")
        torch = self._torch
        as_long = lambda name: torch.from_numpy(np.asarray(batch[name])).long()  # noqa: E731
        out = self.model(input_ids=as_long("input_ids"),
                         token_type_ids=as_long("token_type_ids"),
                         attention_mask=as_long("attention_mask"))
        vocab = out.prediction_logits.shape[-1]
        positions = as_long("masked_positions")
        logits = torch.gather(out.prediction_logits, 1,
                              positions[:, :, None].expand(-1, -1, vocab)).reshape(-1, vocab)
        labels = as_long("masked_ids").reshape(-1)
        weights = torch.from_numpy(np.asarray(batch["masked_weights"], np.float32)).reshape(-1)
        total = torch.clamp(weights.sum(), min=1.0)
        token_losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        result = {"mlm_loss": (token_losses * weights).sum() / total,
                  "mlm_accuracy": ((logits.argmax(-1) == labels).float() * weights).sum() / total}
        result["loss"] = result["mlm_loss"]
        if use_nsp:
            result["nsp_loss"] = torch.nn.functional.cross_entropy(
                out.seq_relationship_logits, as_long("next_sentence_label"))
            result["loss"] = result["loss"] + result["nsp_loss"]
        return result

    def step(self, batch: dict, use_nsp: bool) -> dict[str, float]:
        """One update on the batch; the metrics are those before it, as train_step logs them."""
        self.optimizer.zero_grad()
        result = self.losses(batch, use_nsp)
        result["loss"].backward()
        # clip_grad_norm_ returns the norm before clipping, as train_step's grad_norm is.
        clip = self.grad_clip_norm if self.grad_clip_norm and self.grad_clip_norm > 0 else np.inf
        grad_norm = self._torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        metrics = {name: value.item() for name, value in result.items()}
        metrics["grad_norm"] = grad_norm.item()
        return metrics
