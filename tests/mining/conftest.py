import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    """Tiny CPU work: one thread is as fast, and much faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_SAM = {  # a random SamConfig small enough for CPU tests: 64 px input, 8x8 embeddings
    "vision_config": {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1],
                      "num_pos_feats": 8, "mlp_dim": 32},
    "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
    "mask_decoder_config": {"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "iou_head_hidden_dim": 16},
}


@pytest.fixture(scope="session")
def tiny_sam_config():
    import copy

    return copy.deepcopy(TINY_SAM)
