"""A trial's set-up does each piece of work once: the training captions are hashed once for both caches."""

from __future__ import annotations


def test_a_trial_hashes_its_training_captions_once(tiny_config, monkeypatch):
    from trainables import tokenizer
    from trainables.train import run_local

    run_local(tiny_config.replace(epochs=1, steps_per_epoch=1))  # caches built: the timed trial only reads them
    calls = []
    real = tokenizer.captions_digest

    def counting(captions):
        calls.append(len(captions))
        return real(captions)

    from trainables import batches, train

    for module in (tokenizer, train, batches):  # every name the digest is called by
        if hasattr(module, "captions_digest"):
            monkeypatch.setattr(module, "captions_digest", counting)
    run_local(tiny_config.replace(epochs=1, steps_per_epoch=1))
    assert calls == [tiny_config.synthetic_train_size]


def test_a_given_digest_keys_the_same_caches_as_a_computed_one(tiny_config, tmp_path):
    """Passing the digest is only a shortcut: the tokenizer folder and the tokenised set are the same."""
    from trainables.batches import cached_tokenize_set
    from trainables.data.sources import load_train_set
    from trainables.model import make_tokenizer
    from trainables.tokenizer import captions_digest, corpus_tokenizer_dir

    train_raw, _ = load_train_set(tiny_config)
    digest = captions_digest(train_raw.captions)
    assert corpus_tokenizer_dir(tmp_path, train_raw.captions, 300) == corpus_tokenizer_dir(
        tmp_path, train_raw.captions, 300, digest)
    tok = make_tokenizer(tiny_config, train_raw.captions, digest)
    assert tok.key == make_tokenizer(tiny_config, train_raw.captions).key
    given = cached_tokenize_set(train_raw, tok, tmp_path, digest=digest)
    computed = cached_tokenize_set(train_raw, tok, tmp_path)
    assert len(list((tmp_path / "text").glob("tokens-*.npz"))) == 1
    assert (given.tokens == computed.tokens).all() and given.languages == computed.languages
