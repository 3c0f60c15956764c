from lorakit.cli import main
from lorakit.toy import BASE_DIR


def test_toy_path_prints_the_shipped_folder(capsys):
    assert main(["toy", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(BASE_DIR)


def test_build_base_writes_a_loadable_pipeline(tmp_path, capsys):
    out = tmp_path / "base"
    code = main(["toy", "build-base", "--out", str(out), "--steps", "2", "--vae-steps", "2", "--images", "32",
                 "--batch", "4", "--no-evaluate"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    from lorakit.toy import load_folder

    pipe = load_folder(out)
    image = pipe("a red circle on a white background", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    assert not (out / "tokenizer" / "tokenizer.json").exists()  # vocab.json + merges.txt: a third of the size

    again = tmp_path / "again"
    assert main(["toy", "build-base", "--out", str(again), "--steps", "1", "--vae-from", str(out), "--images", "8",
                 "--batch", "2", "--no-evaluate"]) == 0
    assert (again / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_build_base_rejects_bad_input(tmp_path, capsys):
    assert main(["toy", "build-base", "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["toy", "build-base", "--out", str(tmp_path / "x"), "--vae-from", str(tmp_path)]) == 2
    assert "not a toy base folder" in capsys.readouterr().err
