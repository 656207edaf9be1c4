"""The RTL head and the TR loss on a tiny random BERT: copies, masks, gradients, learnability, formulas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from model.train.losses import gather_with_grad, translation_ranking_loss
from model.train.rtl import IGNORE_INDEX, RTLHead, attention_keep, make_to_compact, rtl_labels
from tests.sentences import GROUPS

VOCAB = 250037
PAD, MASK = 1, 250001


def _pairs(n: int) -> list[tuple[str, str]]:
    """(non-English, English) pairs from different translation groups, so lengths and targets differ."""
    langs = ("de", "fr", "es", "ru")
    pairs = [(g[lang], g["en"]) for i, g in enumerate(GROUPS) if (lang := langs[i % len(langs)]) in g]
    assert len(pairs) >= n
    return pairs[:n]


def _tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def _encode(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [e.ids for e in tokenizer.encode_batch(texts)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _load(checkpoint: Path, attn: str = "eager") -> Any:
    from transformers import BertModel

    return BertModel.from_pretrained(checkpoint, add_pooling_layer=False, attn_implementation=attn)


class Batch:
    """One tokenised batch of pairs plus an English vocabulary with some distractor ids."""

    def __init__(self, tokenizer: Any, n: int = 4, extra: int = 100) -> None:
        pairs = _pairs(n)
        self.src_ids, self.src_mask = _encode(tokenizer, [s for s, _ in pairs])
        self.tgt_ids, self.tgt_mask = _encode(tokenizer, [e for _, e in pairs])
        assert int(self.src_mask.sum(1).min()) < self.src_ids.shape[1], "want source padding"
        assert int(self.tgt_mask.sum(1).min()) < self.tgt_ids.shape[1], "want target padding"
        gen = torch.Generator().manual_seed(0)
        others = torch.randint(3, 200_000, (extra,), generator=gen)
        used = self.tgt_ids[self.tgt_mask.bool()]
        self.en_ids = torch.tensor(sorted(set(used.tolist()) | set(others.tolist())))
        self.to_compact = make_to_compact(self.en_ids, VOCAB)
        self.labels = rtl_labels(self.tgt_ids, self.tgt_mask, self.to_compact)


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Any:
    return _tokenizer(tiny_checkpoint)


@pytest.fixture(scope="module")
def batch(tokenizer: Any) -> Batch:
    return Batch(tokenizer)


# --------------------------------------------------------------------------- construction


def test_head_is_an_independent_copy(tiny_checkpoint: Path, batch: Batch) -> None:
    encoder = _load(tiny_checkpoint)
    head = RTLHead(encoder, batch.en_ids, layers=1, mask_token_id=MASK)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}

    enc_ptrs = {p.data_ptr() for p in encoder.parameters()}
    assert all(p.data_ptr() not in enc_ptrs for p in head.parameters())
    assert len(head.layers) == 1
    for k, v in head.layers[0].state_dict().items():  # the LAST layer, copied
        assert torch.equal(v, encoder.encoder.layer[-1].state_dict()[k]), k
    word = encoder.embeddings.word_embeddings.weight
    assert torch.equal(head.decoder.weight, word[batch.en_ids])
    assert torch.equal(head.decoder.bias, torch.zeros(len(batch.en_ids)))
    assert head.decoder.out_features == len(batch.en_ids)
    emb: Any = head.embeddings
    assert torch.equal(emb.word_embeddings.weight, word[[PAD, MASK]])
    assert torch.equal(emb.position_embeddings.weight, encoder.embeddings.position_embeddings.weight)
    assert torch.equal(emb.LayerNorm.weight, encoder.embeddings.LayerNorm.weight)

    with torch.no_grad():
        for p in head.parameters():
            p.add_(1.0)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k

    head2 = RTLHead(encoder, batch.en_ids)
    assert len(head2.layers) == 2
    with pytest.raises(ValueError):
        RTLHead(encoder, batch.en_ids, layers=3)
    with pytest.raises(ValueError):
        RTLHead(encoder, torch.tensor([5, 5]))
    with pytest.raises(ValueError):
        RTLHead(encoder, torch.tensor([VOCAB]))


def test_shapes(tiny_checkpoint: Path, batch: Batch) -> None:
    encoder = _load(tiny_checkpoint)
    head = RTLHead(encoder, batch.en_ids).eval()
    states = encoder(input_ids=batch.src_ids, attention_mask=batch.src_mask).last_hidden_state
    logits = head.predict(states, batch.src_mask, batch.tgt_mask)
    assert logits.shape == (*batch.tgt_ids.shape, len(batch.en_ids))
    loss = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, batch.labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    too_long = torch.ones((1, 40), dtype=torch.long)  # 40 + 40 > 64 positions of the tiny model
    with pytest.raises(ValueError, match="positions"):
        head.predict(torch.zeros(1, 40, 32), too_long, too_long)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_matches_the_dap_code_path(tiny_checkpoint: Path, batch: Batch, attn: str) -> None:
    """DAP runs a BertModel on inputs_embeds with a 2-D mask, CLS columns zeroed: the same logits here."""
    encoder = _load(tiny_checkpoint, attn)
    head = RTLHead(encoder, batch.en_ids, layers=2).eval()  # the tiny model has 2 layers: all of them
    reference = copy.deepcopy(encoder).eval()
    states = torch.randn(*batch.src_ids.shape, 32)
    src_len = batch.src_ids.shape[1]
    with torch.no_grad():
        masked = torch.where(batch.tgt_mask.bool(), MASK, PAD)  # core/models.py:128-138
        queries = reference.embeddings(input_ids=masked, token_type_ids=torch.zeros_like(masked))
        attention = torch.cat([batch.src_mask, batch.tgt_mask], dim=1)
        attention[:, [0, src_len]] = 0  # core/models.py:239-243
        hidden = reference(
            inputs_embeds=torch.cat([states, queries], dim=1),
            token_type_ids=torch.zeros_like(attention),
            attention_mask=attention,
        ).last_hidden_state[:, src_len:]
        expected = head.decoder(head.transform(hidden))
        got = head.predict(states, batch.src_mask, batch.tgt_mask)
    real = batch.tgt_mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- masks


def test_attention_keep_hides_padding_and_both_cls() -> None:
    src = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    tgt = torch.tensor([[1, 1, 0], [1, 1, 1]])
    keep = attention_keep(src, tgt)
    assert keep.tolist() == [
        [False, True, True, False, False, True, False],
        [False, True, True, True, False, True, True],
    ]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cls_and_padding_are_unseen(tiny_checkpoint: Path, batch: Batch, attn: str) -> None:
    encoder = _load(tiny_checkpoint, attn)
    head = RTLHead(encoder, batch.en_ids).eval()
    torch.manual_seed(1)
    states = torch.randn(*batch.src_ids.shape, 32)
    real = batch.tgt_mask.bool()

    def run(st: torch.Tensor, tgt_ids: torch.Tensor = batch.tgt_ids) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = head.predict(st, batch.src_mask, batch.tgt_mask)
            loss = head(st, batch.src_mask, tgt_ids, batch.tgt_mask, batch.labels)
        return logits, loss

    logits, loss = run(states)

    cls_changed = states.clone()
    cls_changed[:, 0] += 10 * torch.randn_like(cls_changed[:, 0])
    logits2, loss2 = run(cls_changed)
    assert torch.equal(logits2[real], logits[real]) and torch.equal(loss2, loss)

    pad_changed = states.clone()
    pad = batch.src_mask == 0
    pad_changed[pad] = 10 * torch.randn_like(pad_changed[pad])
    tgt_ids = batch.tgt_ids.masked_fill(batch.tgt_mask == 0, 12345)
    logits3, loss3 = run(pad_changed, tgt_ids)
    assert torch.equal(logits3[real], logits[real]) and torch.equal(loss3, loss)

    # Extra target padding leaves every real target position's prediction alone.
    wider = torch.cat([batch.tgt_mask, torch.zeros_like(batch.tgt_mask[:, :3])], dim=1)
    with torch.no_grad():
        logits4 = head.predict(states, batch.src_mask, wider)[:, : batch.tgt_mask.shape[1]]
    torch.testing.assert_close(logits4[real], logits[real], rtol=0, atol=1e-5)

    # Positive control: a real source token does matter.
    token_changed = states.clone()
    token_changed[:, 1] += 10 * torch.randn_like(token_changed[:, 1])
    logits5, _ = run(token_changed)
    assert not torch.allclose(logits5[real], logits[real])


def test_padding_and_target_cls_labels_are_ignored(tiny_checkpoint: Path, batch: Batch) -> None:
    encoder = _load(tiny_checkpoint)
    head = RTLHead(encoder, batch.en_ids).eval()
    states = torch.randn(*batch.src_ids.shape, 32)
    n = len(batch.en_ids)
    full = batch.tgt_ids.masked_fill(batch.tgt_mask == 0, 0)
    labels = batch.to_compact(full)  # valid labels everywhere, CLS and padding included
    assert bool((labels >= 0).all())
    scrambled = labels.clone()
    scrambled[:, 0] = (labels[:, 0] + 7) % n
    scrambled[batch.tgt_mask == 0] = 3
    with torch.no_grad():
        loss = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, labels)
        loss2 = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, scrambled)
        loss3 = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, batch.labels)
        logits = head.predict(states, batch.src_mask, batch.tgt_mask)
    assert torch.equal(loss, loss2) and torch.equal(loss, loss3)
    scored = batch.tgt_mask.bool().clone()
    scored[:, 0] = False
    expected = F.cross_entropy(logits[scored], labels[scored])
    torch.testing.assert_close(loss, expected)

    nothing = torch.full_like(batch.labels, IGNORE_INDEX)
    with torch.no_grad():
        zero = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, nothing)
    assert float(zero) == 0.0


# --------------------------------------------------------------------------- gradients and learning


def test_gradients_reach_the_encoder_from_rtl_alone(tiny_checkpoint: Path, batch: Batch) -> None:
    encoder = _load(tiny_checkpoint).train()
    head = RTLHead(encoder, batch.en_ids).train()
    states = encoder(input_ids=batch.src_ids, attention_mask=batch.src_mask).last_hidden_state
    states.retain_grad()
    loss = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, batch.labels)
    loss.backward()

    assert states.grad is not None
    assert bool((states.grad[:, 0] == 0).all()), "the source CLS must get nothing from RTL"
    assert bool((states.grad[batch.src_mask == 0] == 0).all()), "nor must source padding"
    assert bool((states.grad[:, 1].abs().sum(-1) > 0).all())
    for name, p in encoder.encoder.named_parameters():
        if name.endswith("attention.self.key.bias"):
            continue  # softmax is invariant to a per-query constant, so this gradient is exactly 0
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    word_grad = encoder.embeddings.word_embeddings.weight.grad
    assert word_grad is not None and float(word_grad[batch.src_ids[0, 1]].abs().sum()) > 0
    for name, p in head.named_parameters():
        assert p.grad is not None, name


def test_overfits_one_batch(tiny_checkpoint: Path, batch: Batch) -> None:
    torch.manual_seed(0)
    encoder = _load(tiny_checkpoint).train()
    encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # keeps Adam steps cheap
    head = RTLHead(encoder, batch.en_ids).train()
    params = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(50):
        states = encoder(input_ids=batch.src_ids, attention_mask=batch.src_mask).last_hidden_state
        loss = head(states, batch.src_mask, batch.tgt_ids, batch.tgt_mask, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses[::10]


# --------------------------------------------------------------------------- labels


def test_rtl_labels_round_trip(batch: Batch) -> None:
    labels = batch.labels
    scored = batch.tgt_mask.bool().clone()
    scored[:, 0] = False
    assert bool((labels[~scored] == IGNORE_INDEX).all())
    assert bool((labels[scored] >= 0).all())
    assert torch.equal(batch.en_ids[labels[scored]], batch.tgt_ids[scored])

    to_compact = make_to_compact(torch.tensor([10, 4, 7]), VOCAB)
    ids = torch.tensor([[0, 4, 7, 10, 11, 1], [0, -5, VOCAB, 10**7, 4, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    assert to_compact(ids).tolist() == [[-100, 1, 2, 0, -100, -100], [-100, -100, -100, -100, 1, -100]]
    assert rtl_labels(ids, mask, to_compact).tolist() == [
        [-100, 1, 2, 0, -100, -100],
        [-100, -100, -100, -100, 1, -100],
    ]
    with pytest.raises(ValueError):
        make_to_compact(torch.tensor([1, 1]), VOCAB)
    with pytest.raises(ValueError):
        make_to_compact(torch.tensor([-1]), VOCAB)


# --------------------------------------------------------------------------- translation ranking


def _by_hand(src: torch.Tensor, en: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    cos = F.cosine_similarity(src[:, None, :], en[None, :, :], dim=-1)
    xx2en = -(cos / tau).log_softmax(dim=1).diagonal().mean()
    en2xx = -(cos.T / tau).log_softmax(dim=1).diagonal().mean()
    return xx2en, en2xx


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_translation_ranking_matches_the_formula(tau: float) -> None:
    torch.manual_seed(0)
    src, en = 3 * torch.randn(6, 16), torch.randn(6, 16)
    xx2en, en2xx = _by_hand(src, en, tau)
    torch.testing.assert_close(translation_ranking_loss(src, en, tau, "xx2en"), xx2en)
    torch.testing.assert_close(translation_ranking_loss(src, en, tau, "en2xx"), en2xx)
    torch.testing.assert_close(translation_ranking_loss(src, en, tau, "both"), (xx2en + en2xx) / 2)
    torch.testing.assert_close(translation_ranking_loss(src, en, tau), (xx2en + en2xx) / 2)
    assert not torch.allclose(xx2en, en2xx)
    with pytest.raises(ValueError):
        translation_ranking_loss(src, en[:5])
    with pytest.raises(ValueError):
        translation_ranking_loss(src, en, tau, "sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize("direction", ["xx2en", "en2xx", "both"])
def test_aligned_pairs_score_better_than_shuffled(direction: Any) -> None:
    torch.manual_seed(0)
    src = torch.randn(8, 16)
    en = src + 0.1 * torch.randn(8, 16)
    shuffled = en[torch.roll(torch.arange(8), 1)]
    aligned = translation_ranking_loss(src, en, direction=direction)
    assert float(aligned) < 0.1
    assert float(aligned) < float(translation_ranking_loss(src, shuffled, direction=direction)) - 1


def test_gather_is_identity_without_distributed() -> None:
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


# --------------------------------------------------------------------------- the real model


@pytest.mark.real_model
def test_real_model_forward_backward(real_model_dir: Path) -> None:
    from model.torch_model import load_transformer

    tokenizer = _tokenizer(real_model_dir)
    assert tokenizer.token_to_id("<mask>") == MASK and tokenizer.token_to_id("<pad>") == PAD
    encoder: Any = load_transformer(real_model_dir).train()
    data = Batch(tokenizer, n=4, extra=1000)
    head = RTLHead(encoder, data.en_ids, layers=2, mask_token_id=MASK).train()
    assert head.decoder.weight.shape == (len(data.en_ids), 384)
    assert len(head.layers) == 2
    states = encoder(input_ids=data.src_ids, attention_mask=data.src_mask).last_hidden_state
    loss = head(states, data.src_mask, data.tgt_ids, data.tgt_mask, data.labels)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    last = encoder.encoder.layer[-1].output.dense.weight.grad
    assert last is not None and float(last.abs().sum()) > 0
    assert head.decoder.weight.grad is not None and float(head.decoder.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("margin", [0.1, 0.3])
def test_additive_margin_matches_the_formula(margin: float) -> None:
    """LaBSE's margin: the true pair's cosine is lowered by m before scaling; negatives untouched."""
    torch.manual_seed(1)
    src, en = torch.randn(6, 16), torch.randn(6, 16)
    cos = F.cosine_similarity(src[:, None, :], en[None, :, :], dim=-1)
    shifted = cos - margin * torch.eye(6)
    xx2en = -(shifted / 0.05).log_softmax(dim=1).diagonal().mean()
    en2xx = -(shifted.T / 0.05).log_softmax(dim=1).diagonal().mean()
    got = translation_ranking_loss(src, en, 0.05, "both", margin)
    torch.testing.assert_close(got, (xx2en + en2xx) / 2)
    assert float(got) > float(translation_ranking_loss(src, en, 0.05, "both"))
