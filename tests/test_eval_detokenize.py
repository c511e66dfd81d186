import pytest
from conftest import shared_file

from gpt2kit.evals.detokenize import LM1B, PTB, PTB_QUOTES, WIKITEXT


def assert_invertible(detokenizer, lines):
    for line in lines:
        assert detokenizer.retokenize(detokenizer.detokenize_line(line)) == line.split(), line


def test_wikitext_detokenizer_examples():
    line = " = = Description = = \n"
    assert WIKITEXT.detokenize_line(line) == "== Description =="
    line = ' The " lobster " is 1 @,@ 000 km ( 24 in ) long , 0 @.@ 7 kg , state @-@ of @-@ the @-@ art . '
    assert WIKITEXT.detokenize_line(line) == 'The "lobster" is 1,000 km (24 in) long, 0.7 kg, state-of-the-art.'
    assert (
        WIKITEXT.detokenize_line("Habitat 's VIP , H. americanus . U.S. ; don 't")
        == "Habitat's VIP, H. americanus. U.S.; don't"
    )
    assert_invertible(WIKITEXT, [line, "Plan A . No . 5 . U.S. . $ 5 , 25 % ... end"])


def test_wikitext_keeps_a_space_it_could_not_undo():
    # "A ." joined would read back as the initial "A.", so the space stays.
    assert WIKITEXT.detokenize_line("plan A . Then") == "plan A . Then"
    assert_invertible(WIKITEXT, ["plan A . Then"])


def test_ptb_detokenizer_examples():
    line = " the company 's shares fell $ N to N N in N and they do n't care about investors ' <unk> \n"
    text = PTB.detokenize_line(line)
    assert text == "the company's shares fell $1 to 1 1 in 1 and they don't care about investors' <unk>"
    assert PTB.retokenize(text) == line.split()


def test_lambada_and_lm1b_detokenizers():
    line = "`` nineteen , '' she said , and he could n't breathe ."
    assert PTB_QUOTES.detokenize_line(line) == '"nineteen," she said, and he couldn\'t breathe.'
    assert_invertible(PTB_QUOTES, [line, "`` alone ''", "wahey !! she thought ?!"])
    line = 'The U.S. Centers ( CDC ) said it " is n\'t " ready , officials said .'
    assert LM1B.detokenize_line(line) == 'The U.S. Centers (CDC) said it "isn\'t" ready, officials said.'
    assert_invertible(LM1B, [line])


def test_wikitext2_valid_round_trips_and_matches_the_published_word_count():
    lines = shared_file("wikitext-2/wiki.valid.tokens").read_text(encoding="utf-8").split("\n")[:-1]
    assert_invertible(WIKITEXT, lines)
    text = WIKITEXT.detokenize("\n".join(lines))
    words = len(WIKITEXT.retokenize(text))
    assert words == 213_886
    assert words + len(lines) == 217_646  # WikiText-2 valid, as published (one <eos> per line)
    assert text.count(" ") < 0.85 * sum(len(line.split()) for line in lines)  # it did detokenize


def test_ptb_valid_round_trips_and_matches_the_published_word_count():
    lines = shared_file("ptb/ptb.valid.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert_invertible(PTB, lines)
    words = PTB.count_tokens(PTB.detokenize_line(line) for line in lines)
    assert words == 70_390
    assert words + len(lines) == 73_760  # PTB valid as published (Mikolov), one <eos> per sentence


@pytest.mark.parametrize("detokenizer", [WIKITEXT, PTB, PTB_QUOTES, LM1B])
def test_every_detokenizer_inverts_on_its_own_punctuation(detokenizer):
    tokens = [*detokenizer.attach_left, *detokenizer.attach_right, *detokenizer.infix, *detokenizer.quotes]
    line = " ".join(f"w{i} {t} x{i}" for i, t in enumerate(tokens))
    assert_invertible(detokenizer, [line, " ".join(tokens), " ".join(reversed(tokens))])
