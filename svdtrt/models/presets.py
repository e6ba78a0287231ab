"""Built-in SVD-architecture models, as configs (data), built with seeded random weights.

``tiny`` is the demo and test model; ``small`` differs from it in depth, widths, frame
count and aspect ratio, so that nothing passes by accident of one configuration.
``svd`` and ``svd-xt`` are the released architectures (1.52 B-parameter UNet, 632 M-parameter
CLIP ViT-H/14 vision tower, 98 M-parameter temporal VAE) with seeded random weights, for export,
memory and numerics work at production scale; their module configs are those of
``stabilityai/stable-video-diffusion-img2vid{,-xt}`` (``unet/``, ``vae/``, ``image_encoder/config.json``),
they differ only in ``num_frames`` (14 and 25), and the default clip is the pipeline's 576x1024.
A preset with ``"init": "fast"`` skips the modules' own initialisation and fills every weight
with a seeded normal draw (:func:`svdtrt.models.loading.fast_seeded_init`): the default init of a 1.5 B
UNet takes about 50 s on 2 cores, and weight values do not change export behaviour.
``mid`` is large enough for int8 and ONNX Runtime to pay off on a CPU (compute, not
Python and framework overhead, dominates a clip) yet calibrates and benchmarks in minutes.
The scheduler and feature-extractor configs are those of the released SVD checkpoints
(``stabilityai/stable-video-diffusion-img2vid{,-xt}``: ``scheduler/scheduler_config.json``,
``feature_extractor/preprocessor_config.json``).
"""

from __future__ import annotations

#: EulerDiscreteScheduler settings of the released SVD checkpoints.
SVD_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

#: CLIPImageProcessor settings of the released SVD checkpoints (OpenAI CLIP normalisation).
SVD_FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}

PRESETS: dict[str, dict] = {
    "tiny": {
        "description": "2-level UNet, 32/64 channels, 4 frames at 64x64 (the demo model)",
        "seed": 0,
        "frames": 4, "height": 64, "width": 64,
        "unet": {
            "sample_size": 16, "in_channels": 8, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
            "block_out_channels": [32, 64], "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 24, "layers_per_block": 1,
            "cross_attention_dim": 32, "num_attention_heads": [2, 4], "num_frames": 4,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 3, "block_out_channels": [32, 32, 64],
            "layers_per_block": 1, "sample_size": 64, "scaling_factor": 0.18215,
        },
        "image_encoder": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 224, "patch_size": 32, "projection_dim": 32,
        },
    },
    "small": {
        "description": "3-level UNet, 32/64/96 channels, 2 layers per block, 6 frames at 64x96",
        "seed": 1,
        "frames": 6, "height": 64, "width": 96,
        "unet": {
            "sample_size": 16, "in_channels": 8, "out_channels": 4,
            "down_block_types": [
                "CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal",
            ],
            "up_block_types": [
                "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
            ],
            "block_out_channels": [32, 64, 96], "addition_time_embed_dim": 16,
            "projection_class_embeddings_input_dim": 48, "layers_per_block": 2,
            "cross_attention_dim": 48, "num_attention_heads": [2, 4, 6], "num_frames": 6,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 3, "block_out_channels": [32, 64, 64],
            "layers_per_block": 2, "sample_size": 64, "scaling_factor": 0.18215,
        },
        "image_encoder": {
            "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 224, "patch_size": 28, "projection_dim": 48,
        },
    },
    "mid": {
        "description": "3-level UNet, 64/128/192 channels, 1 layer per block, 8 frames at 128x128 "
                       "(latent 16x16): large enough for int8 to pay off on a CPU, small enough to "
                       "calibrate and benchmark in minutes",
        "seed": 2,
        "frames": 8, "height": 128, "width": 128,
        "unet": {
            "sample_size": 16, "in_channels": 8, "out_channels": 4,
            "down_block_types": [
                "CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal",
            ],
            "up_block_types": [
                "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
            ],
            "block_out_channels": [64, 128, 192], "addition_time_embed_dim": 32,
            "projection_class_embeddings_input_dim": 96, "layers_per_block": 1,
            "cross_attention_dim": 128, "num_attention_heads": [2, 4, 6], "num_frames": 8,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "block_out_channels": [32, 64, 64, 64],
            "layers_per_block": 1, "sample_size": 128, "scaling_factor": 0.18215,
        },
        "image_encoder": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": 224, "patch_size": 32, "projection_dim": 128,
        },
    },
}


def _released(frames: int, seed: int) -> dict:
    """The released SVD / SVD-XT module configs (they differ only in ``num_frames``)."""
    return {
        "description": f"the released SVD{'-XT' if frames == 25 else ''} architecture, {frames} frames at "
                       "576x1024, seeded random weights",
        "seed": seed, "init": "fast",
        "frames": frames, "height": 576, "width": 1024,
        "unet": {
            "sample_size": 96, "in_channels": 8, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
            "block_out_channels": [320, 640, 1280, 1280], "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 768, "layers_per_block": 2,
            "cross_attention_dim": 1024, "transformer_layers_per_block": 1,
            "num_attention_heads": [5, 10, 20, 20], "num_frames": frames,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "sample_size": 768, "scaling_factor": 0.18215, "force_upcast": True,
        },
        "image_encoder": {
            "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
            "num_attention_heads": 16, "num_channels": 3, "image_size": 224, "patch_size": 14,
            "projection_dim": 1024, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
        },
    }


PRESETS["svd"] = _released(14, seed=14)
PRESETS["svd-xt"] = _released(25, seed=25)
