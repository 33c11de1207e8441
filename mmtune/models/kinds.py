"""Model kinds: what a recipe trains decides how the model is built, how a sample is encoded and how encoded
samples become a batch. The trainer and inference ask the kind (`model.kind`), never test for a modality."""
from __future__ import annotations

from mmtune.config import RunConfig, check_choice


class LanguageModel:
    """A (multimodal) language model: LLM + optional encoder and bridge; chat template; token rows."""

    def build(self, cfg: RunConfig):
        """(model, tokenizer) with each part's tuning applied."""
        from mmtune.models.build import build_model

        return build_model(cfg)

    def sample_encoder(self, cfg: RunConfig, model, tokenizer):
        """The per-sample transform (runs in DataLoader workers); it names its collate function."""
        from mmtune.data.pipeline import SampleEncoder

        return SampleEncoder(tokenizer=tokenizer, template=cfg.data.template, max_len=cfg.data.max_len,
                             system_prompt=cfg.data.system_prompt, media_tokens=model.media_tokens,
                             media_loaders={kind: part.encoder.preprocess for kind, part in model.media.items()},
                             context_encoders={kind: part.encode_context for kind, part in model.media.items()
                                               if part.encode_context},
                             overlong=cfg.data.overlong, seq2seq=model.seq2seq)

    def describe(self, cfg: RunConfig) -> str:
        return cfg.model.llm


class ImageEditorKind:
    """An InstructPix2Pix latent diffusion editor (model.editor): edit triplets, one per row, never packed."""

    def build(self, cfg: RunConfig):
        from mmtune.models.editor import build_editor

        return build_editor(cfg)

    def sample_encoder(self, cfg: RunConfig, model, tokenizer):
        from mmtune.data.edits import EditEncoder

        return EditEncoder(model.text_encoder.prompt, cfg.model.editor.image_size)

    def describe(self, cfg: RunConfig) -> str:
        e = cfg.model.editor
        text = f"LLM {cfg.model.llm}" if e.text_encoder.name == "llm" else f"text {e.text_encoder.name}"
        return f"image editor (UNet {e.init_unet or 'from scratch'}, VAE {e.vae}, {text})"


KINDS = {"lm": LanguageModel(), "image_editor": ImageEditorKind()}


def get_kind(name: str):
    check_choice(name, KINDS, "model.kind")
    return KINDS[name]


def sample_encoder(cfg: RunConfig, model, tokenizer):
    """The per-sample transform of the run's model kind; training and held-out evaluation share it."""
    return get_kind(cfg.model.kind).sample_encoder(cfg, model, tokenizer)
