"""Shipped recipes are documented key by key; the comments come from the docstrings (``ra3 config document``)."""

import pytest

from ra3.cli import main, recipe_names, resolve_config
from ra3.config_docs import descriptions, document, recipe_descriptions, undocumented

DUMP = """\
# Set the seed.Set True for a random one. (type: Union[bool, int], default: True)
seed_everything: 0

# Customize every aspect of training via flags
trainer:

  # Stop training after this number of steps. Disabled by default. (type: int, default: -1)
  max_steps: -1
  callbacks:
  - class_path: lightning.pytorch.callbacks.ModelCheckpoint

    # Save the model periodically by monitoring a quantity.
    init_args:

      # Directory to save the model file. (type: Union[str, Path, null], default: null)
      dirpath:
model:
  class_path: ra3.em.MStepModule

  # The M-step (and NTP): token-mean cross-entropy.
  init_args:

    # peak learning rate of AdamW (required, type: float)
    learning_rate: 0.0003
"""


def test_descriptions_and_comments_come_from_the_commented_dump(tmp_path):
    docs = descriptions(DUMP)
    assert docs[("seed_everything",)] == "Set the seed.Set True for a random one."
    assert docs[("trainer", "max_steps")] == "Stop training after this number of steps. Disabled by default."
    assert docs[("trainer", "callbacks", "-", "init_args", "dirpath")] == "Directory to save the model file."
    assert docs[("model", "init_args", "learning_rate")] == "peak learning rate of AdamW"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed_everything: 1\ntrainer:\n  max_steps: 5   # our budget\n  callbacks:\n"
                      "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args:\n"
                      "        dirpath: 'a # b'\n        every_n: 3\nmodel:\n  class_path: ra3.em.MStepModule\n"
                      "  init_args:\n    learning_rate: 1e-3\n")
    text, missing = document(recipe, docs)
    lines = text.splitlines()
    assert lines[0] == "seed_everything: 1".ljust(57) + " # Set the seed"
    assert lines[2] == "  max_steps: 5   # our budget"  # a comment already there is kept
    assert lines[4].endswith("# Save the model periodically by monitoring a quantity")  # class_path: its class
    assert lines[6].endswith("# Directory to save the model file")  # '#' inside a string is no comment
    assert lines[9].endswith("# The M-step (and NTP): token-mean cross-entropy")
    assert lines[11].endswith("# peak learning rate of AdamW")
    assert missing == ["trainer.callbacks.-.init_args.every_n"] and lines[7] == "        every_n: 3"
    assert undocumented(recipe, docs) == sorted(["seed_everything", "trainer.callbacks.-.class_path",
                                          "trainer.callbacks.-.init_args.dirpath", "trainer.callbacks.-.init_args.every_n",
                                                 "model.class_path", "model.init_args.learning_rate"])


@pytest.mark.parametrize("name", recipe_names())
def test_every_key_of_every_shipped_recipe_is_commented(name):
    path = resolve_config(name)
    assert undocumented(path, recipe_descriptions(path, main)) == [], f"`ra3 config document {name} --write` documents it"


def test_config_document_cli_writes_and_checks(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("".join("    batch_size: 4\n" if line.startswith("    batch_size:") else line
                              for line in open(resolve_config("skillworld/ntp")).readlines()))
    with pytest.raises(SystemExit) as exit_:
        main(["config", "document", str(recipe), "--check"])
    assert exit_.value.code != 0 and "keys without a comment: data.init_args.batch_size (" in capsys.readouterr().err
    main(["config", "document", str(recipe), "--write"])
    main(["config", "document", str(recipe), "--check"])
    assert "every key of" in capsys.readouterr().out
    assert "    batch_size: 4".ljust(57) + " # rows per batch" in recipe.read_text()
