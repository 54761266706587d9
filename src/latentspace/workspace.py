"""Where the commands keep what they make: one layout of the artifacts folder, named once.

    artifacts/
      emoji/             the emoji corpus: training shards and evaluation tasks (data emoji)
      wordnet/           the text-retrieval task (data wordnet)
      cache/npm/         npm tarballs, integrity-checked
      cache/text/        frozen caption embeddings (training)
      cache/prompts/     class-prompt embeddings (evaluation)
      cache/third_tower/ the frozen third tower's embeddings (three-towers recipes)
      run/               a training run's checkpoint and model (train's default output_dir)
      quickstart/        the quickstart's run; its model in quickstart/model
      ablation/          `latentspace ablate`: one run per recipe and seed, and the table
      eval/ eval-text/   reports of `latentspace eval` / `eval-text` across several models
      collections/       collections by name (collection build NAME)

Every default path of every command comes from here, so the layout is read in one place.
Commands that take an `--artifacts` folder use `Workspace(that folder)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path = Path("artifacts")

    @property
    def emoji(self) -> Path:
        return self.root / "emoji"

    @property
    def wordnet(self) -> Path:
        return self.root / "wordnet"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def npm_cache(self) -> Path:
        return self.cache / "npm"

    @property
    def text_cache(self) -> Path:
        return self.cache / "text"

    @property
    def prompt_cache(self) -> Path:
        return self.cache / "prompts"

    @property
    def third_tower_cache(self) -> Path:
        return self.cache / "third_tower"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def quickstart(self) -> Path:
        return self.root / "quickstart"

    @property
    def quickstart_model(self) -> Path:
        return self.quickstart / "model"

    @property
    def ablation(self) -> Path:
        return self.root / "ablation"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_text(self) -> Path:
        return self.root / "eval-text"

    @property
    def collections(self) -> Path:
        return self.root / "collections"


DEFAULT = Workspace()
