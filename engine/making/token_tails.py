"""A vision transformer's gradient tail, computed for the class token only.

A torchvision ViT classifies from the class token alone (``x[:, 0]`` after the encoder's final
norm). When the explained layer is the last encoder block's first norm (the family default), the
gradient graph recomputes that block behind it for every class: attention, its output projection
and the MLP over all 197 tokens, and their backward, though only the class token's row reaches a
logit. That made vit_b_16's INT8 analysis 2.4x its forward pass (docs/benchmarks.md).

Run for the class token only, the block needs the keys and values of every token (the class
token attends to all of them) but the query, the attention output, the residual, the second
norm and the MLP of one token. The gradient with respect to the explained layer's output is the
same (the rows dropped never reached a logit); export verification compares it with PyTorch's.
"""

from __future__ import annotations

import types
from contextlib import contextmanager


def _class_token_forward(self, input):
    """torchvision's EncoderBlock.forward, for the class token's row only."""
    x = self.ln_1(input)  # a module call: the explained layer's hooks still see (and replace) it
    query = x[:, :1]
    attended, _ = self.self_attention(query, x, x, need_weights=False)
    attended = self.dropout(attended) + input[:, :1]
    return attended + self.mlp(self.ln_2(attended))


def last_block_class_token_only(model, blocks) -> list:
    """The blocks of ``blocks`` that may run for the class token only: torchvision's last
    encoder block of a torchvision VisionTransformer (whose readout is ``x[:, 0]``). Hugging Face
    and timm models are left as they are (their readout may pool over tokens)."""
    try:
        from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
    except ImportError:
        return []
    if not isinstance(model, VisionTransformer) or not len(model.encoder.layers):
        return []
    last = model.encoder.layers[-1]
    return [b for b in blocks if b is last and isinstance(b, EncoderBlock)]


@contextmanager
def class_token_tails(model, blocks):
    """While active, the blocks :func:`last_block_class_token_only` picks compute the class token only."""
    patched = last_block_class_token_only(model, blocks)
    for block in patched:
        block.forward = types.MethodType(_class_token_forward, block)
    try:
        yield bool(patched)
    finally:
        for block in patched:
            del block.forward  # the instance attribute: the class's forward is back
