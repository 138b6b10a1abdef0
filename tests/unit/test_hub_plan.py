"""The pure pieces of vllm_fetch.hub: names, patterns (against huggingface_hub's own filter),
the Hub's revision answer, tree listings, git blob ids, and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from vllm_fetch.hub import names, plan, settings

PATHS = ["config.json", "sub/a.json", "sub/deep/b.bin", "model.safetensors", ".gitattributes",
         "README.md", "original/consolidated.pth"]


@pytest.mark.parametrize(("allow", "ignore"), [
    (None, None), ("*.json", None), (["*.json", "sub/"], None), (None, "sub/"),
    (["*"], ["*.pth", ".*"]), ("sub/*", "*.bin"), ("SUB/*", None), ("*.JSON", None),
])
def test_patterns_select_what_huggingface_hub_selects(allow: object, ignore: object) -> None:
    expected = list(filter_repo_objects(PATHS, allow_patterns=allow,  # type: ignore[arg-type]
                                        ignore_patterns=ignore))  # type: ignore[arg-type]
    assert plan.select(PATHS, allow, ignore) == expected  # type: ignore[arg-type]


def test_git_blob_id_is_gits() -> None:
    hasher = plan.git_blob_hasher(6)
    hasher.update(b"hello\n")
    assert hasher.hexdigest() == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object


def _info(**sibling: object) -> dict[str, object]:
    return {"sha": "a" * 40, "siblings": [{"rfilename": "x.bin", "size": 3,
                                           "blobId": "b" * 40, **sibling}]}


def test_revision_info_and_tree_round_trip() -> None:
    lfs = {"sha256": "c" * 64, "size": 10, "pointerSize": 130}
    commit, entries = plan.parse_revision_info(_info(lfs=lfs))
    assert commit == "a" * 40
    assert entries == [plan.RepoEntry("x.bin", 10, "b" * 40, "c" * 64)]
    assert entries[0].etag == "c" * 64
    assert plan.entries_from_tree(plan.tree_json(entries)) == entries
    assert plan.entries_from_tree({"format_version": 2, "files": {}}) is None


@pytest.mark.parametrize("bad", [{"rfilename": "../x"}, {"rfilename": "/etc/x"},
                                 {"blobId": "zz"}, {"size": -1}, {"size": None},
                                 {"lfs": {"sha256": "short", "size": 1}}])
def test_malformed_revision_info_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(names.HubNameError):
        plan.parse_revision_info(_info(**bad))
    with pytest.raises(names.HubNameError):
        plan.parse_revision_info({"sha": "main", "siblings": []})


def test_names() -> None:
    assert names.repo_folder_name("org/name", "model") == "models--org--name"
    assert names.repo_folder_name("gpt2", "dataset") == "datasets--gpt2"
    assert names.check_revision("refs/pr/1") == "refs/pr/1"
    for bad in ("..", "a/../b", "", "a\nb", "a\\b", "/abs"):
        with pytest.raises(ValueError):
            names.check_revision(bad)
    for bad_id in ("org/na/me", "../x", "org/..", "-x/y", "org/na me"):
        with pytest.raises(ValueError):
            names.check_repo_id(bad_id)
    with pytest.raises(ValueError):
        names.check_repo_type("bucket")


def test_environment_as_huggingface_hub_reads_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN",
                 "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT", "HF_HUB_OFFLINE",
                 "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert settings.hub_cache() == tmp_path / "hub"
    assert settings.token() is None and settings.endpoint() == "https://huggingface.co"
    (tmp_path / "token").write_text("hf_file\n")
    assert settings.token() == "hf_file" and settings.token(False) is None
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert settings.token() == "hf_env" and settings.token("hf_arg") == "hf_arg"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert settings.hub_cache() == tmp_path / "elsewhere"
    assert settings.hub_cache(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1/")
    assert settings.endpoint() == "http://127.0.0.1:1"
    assert not settings.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert settings.offline()
