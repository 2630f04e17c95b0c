import torch

from lowbit.zoo.text import lee_documents, lee_similarities, polarity_sentences, stdlib_sentences


def test_lee_corpus_and_similarities():
    docs, sims = lee_documents(), lee_similarities()
    assert len(docs) == 50 and all(len(d.split()) > 20 for d in docs)
    assert sims.shape == (50, 50) and torch.equal(sims, sims.T)
    assert bool((sims.diagonal() == 1).all()) and 0 <= float(sims.min()) and float(sims.max()) <= 1
    assert float(sims[0, 1]) == 0.3  # first off-diagonal judgement of the published matrix


def test_polarity_sentences_are_balanced():
    sentences = polarity_sentences()
    assert len(sentences) == 200
    assert sum(label for _, label in sentences) == 100


def test_stdlib_sentences_are_deterministic_and_distinct():
    a, b = stdlib_sentences(300), stdlib_sentences(300)
    assert a == b and len(set(a)) == 300
    assert all(5 <= len(s.split()) <= 60 for s in a)
