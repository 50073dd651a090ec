"""python -m probes.data: synth / check / prepare / download, and the download and unpack helpers."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile

import pytest

from probes.data import DATASETS
from probes.data.__main__ import main
from probes.data.download import download_file, extract_archive
from probes.data.errors import DatasetFormatError
from probes.data.synth import GENERATORS


def test_module_runs_and_lists_everything():
    done = subprocess.run([sys.executable, "-m", "probes.data", "list"], capture_output=True, text=True, check=True)
    for name in ("cub", "coco", "cifar10", "lip", "lip-19", "ade20k-part-209", "pascal-object-16"):
        assert name in done.stdout
    mine = {"cub", "coco", "cifar10", "lip", "lip-19", "ade20k-part-209", "ade20k-object-59", "pascal-part-193",
            "pascal-object-16"}
    assert mine <= set(DATASETS) and mine <= set(GENERATORS)      # every served dataset can be synthesised


def test_synth_then_check_as_json(tmp_path, capsys):
    assert main(["synth", "cub", "--out", str(tmp_path), "--seed", "3", "--size", "images=6",
                 "--size", "classes=2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)
    assert main(["check", "cub", "--root", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["images"] == 6 and report["counts"]["classes"] == 2 and report["problems"] == []


def test_check_with_problems_exits_1_and_bad_input_exits_2(tmp_path, capsys):
    main(["synth", "cub", "--out", str(tmp_path), "--size", "images=4", "--size", "classes=2"])
    next((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg")).unlink()
    capsys.readouterr()
    assert main(["check", "cub", "--root", str(tmp_path)]) == 1
    assert "image file not found" in capsys.readouterr().out
    assert main(["prepare", "cifar10", "--root", str(tmp_path / "none")]) == 2
    assert "cifar-10-python.tar.gz: archive not found" in capsys.readouterr().err


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "cub", "--out", "x", "--size", "images"])
    with pytest.raises(SystemExit):
        main(["check", "imagenet", "--root", "x"])


def test_prepare_unpacks_a_release_archive_and_resumes(tmp_path, capsys):
    source = tmp_path / "made"
    main(["synth", "cub", "--out", str(source), "--size", "images=4", "--size", "classes=2"])
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "CUB_200_2011.tgz", "w:gz") as archive:   # the release's top-level folder
        archive.add(source / "CUB_200_2011", arcname="CUB_200_2011")
    assert main(["prepare", "cub", "--root", str(root)]) == 0
    assert main(["check", "cub", "--root", str(root)]) == 0
    (root / "CUB_200_2011.tgz").unlink()                                   # second run: already unpacked
    assert main(["prepare", "cub", "--root", str(root)]) == 0
    assert not [p for p in root.iterdir() if p.name.endswith(".partial")]


def test_prepare_coco_from_the_official_zips(tmp_path):
    source = tmp_path / "made"
    main(["synth", "coco", "--out", str(source), "--size", "train_images=2", "--size", "val_images=2"])
    root = tmp_path / "coco"
    root.mkdir()
    for name, folder in (("annotations_trainval2017.zip", "annotations"), ("val2017.zip", "val2017"),
                         ("train2017.zip", "train2017")):
        with zipfile.ZipFile(root / name, "w") as zipped:
            for path in sorted((source / folder).iterdir()):
                zipped.write(path, f"{folder}/{path.name}")
    assert main(["prepare", "coco", "--root", str(root)]) == 0
    assert main(["check", "coco", "--root", str(root)]) == 0


def test_download_prints_instructions_where_there_is_no_url(tmp_path, capsys):
    assert main(["download", "lip", "--root", str(tmp_path)]) == 0
    assert "TrainVal_parsing_annotations.zip" in capsys.readouterr().out
    assert main(["download", "pascal-part-193", "--root", str(tmp_path)]) == 0
    assert "drive.google.com/drive/folders/1JSNzbxc9MBpNIhMRP8Vd0FFk7K5hC65q" in capsys.readouterr().out


def test_download_checks_md5_and_renames_atomically(tmp_path):
    payload = b"pretend archive" * 1000
    source = tmp_path / "remote.bin"
    source.write_bytes(payload)
    url = source.as_uri()                                 # urllib serves file:// like http://
    good = hashlib.md5(payload).hexdigest()
    dest = download_file(url, tmp_path / "got" / "a.bin", md5=good, log=lambda *_: None)
    assert dest.read_bytes() == payload
    with pytest.raises(DatasetFormatError, match="md5 .* does not match .*expected md5 0{32}"):
        download_file(url, tmp_path / "got" / "b.bin", md5="0" * 32, log=lambda *_: None)
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["a.bin"]     # nothing half-written left
    source.write_bytes(b"changed")                          # present with the right md5: not fetched again
    assert download_file(url, dest, md5=good, log=lambda *_: None).read_bytes() == payload


def test_extract_refuses_paths_leaving_the_folder(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tarred:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tarred.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        extract_archive(archive, tmp_path / "into", log=lambda *_: None)
    assert not (tmp_path / "outside.txt").exists()
    assert not [p for p in (tmp_path / "into").iterdir()]                 # staging folder removed
