import torch

from latentspace.eval.prompt_cache import PromptCache


class Recorder:
    name, space = "rec", "toy@1234"

    def __init__(self):
        self.calls = []

    def embed_images(self, images):
        return torch.ones(len(images), 3)

    def embed_texts(self, texts, task_type="search_query"):
        self.calls.append((tuple(texts), task_type))
        return torch.tensor([[float(len(t)), 1.0, 0.0] for t in texts])

    def runtime_names(self):
        return {"image": "torch-fp32", "text": self.text_runtime}

    text_runtime = "torch-fp32"


def test_repeated_texts_are_read_back_not_recomputed(tmp_path):
    model = Recorder()
    cache = PromptCache(model, tmp_path)
    first = cache.embed_texts(["a cat", "dog"], "search_query")
    again = PromptCache(model, tmp_path).embed_texts(["a cat", "dog"], "search_query")  # new process, same disk
    assert torch.equal(first, again) and len(model.calls) == 1
    cache.embed_texts(["a cat", "dog"], "search_document")  # another prefix: another entry
    cache.embed_texts(["dog", "a cat"], "search_query")  # another order: another entry
    assert len(model.calls) == 3


def test_another_space_never_shares_entries(tmp_path):
    a, b = Recorder(), Recorder()
    b.space = "toy@9999"
    PromptCache(a, tmp_path).embed_texts(["x"])
    PromptCache(b, tmp_path).embed_texts(["x"])
    assert len(a.calls) == len(b.calls) == 1


def test_a_torn_cache_file_is_recomputed(tmp_path):
    model = Recorder()
    cache = PromptCache(model, tmp_path)
    cache.embed_texts(["x"])
    for f in cache.dir.glob("*.pt"):
        f.write_bytes(b"torn")
    assert cache.embed_texts(["x"]).shape == (1, 3) and len(model.calls) == 2


def test_images_pass_straight_through(tmp_path):
    assert PromptCache(Recorder(), tmp_path).embed_images([1, 2]).shape == (2, 3)


def test_suite_uses_the_requested_text_task_type(tmp_path):
    """Class prompts and captions are embedded with the task type the run asks for."""
    import io

    import webdataset as wds
    from PIL import Image

    from latentspace.eval.runner import evaluate_suite

    task = tmp_path / "t"
    (task / "test").mkdir(parents=True)
    (task / "classnames.txt").write_text("a\nbb\n")
    (task / "test" / "nshards.txt").write_text("1\n")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with wds.TarWriter(str(task / "test" / "0.tar")) as w:
        w.write({"__key__": "0", "png": buf.getvalue(), "cls": "0"})
    (tmp_path / "suite.yaml").write_text("name: s\ntasks:\n- {name: t, type: zeroshot_classification}\n")
    model = Recorder()
    evaluate_suite(model, tmp_path / "suite.yaml", progress=False, text_task_type="classification")
    assert {task_type for _, task_type in model.calls} == {"classification"}


def test_vectors_from_another_text_runtime_are_not_served_from_the_cache(tmp_path):
    """An OpenVINO text vector is within the bound of PyTorch's, not equal to it: the cache keeps
    them apart."""
    model = Recorder()
    PromptCache(model, tmp_path).embed_texts(["a cat"], "search_query")
    model.text_runtime = "openvino-fp32"
    PromptCache(model, tmp_path).embed_texts(["a cat"], "search_query")
    assert len(model.calls) == 2
