"""README.md stays true: its model-building example runs and gives the shapes it claims."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_model_example_runs():
    text = README.read_text()
    block = re.search(r"## Build a model and run it\s+```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 1000)
    assert namespace["scores"].shape == (1, 1000)
    assert namespace["score_map"].shape == (1, 6, 10, 1000)
    assert set(namespace["feats"]) == {"relu4_2", "pool5"}
    assert set(namespace["both"]) == {"fc7", "logits"}
    assert namespace["tiny_logits"].shape == (2, 10)
    assert namespace["tiny_variables"]["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 8)
    assert namespace["spec"]["width"] == 0.125 and namespace["spec"]["head_width"] == 32
