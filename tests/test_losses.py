"""semi3d.losses helpers."""
import torch

from semi3d.losses import class_argmax


def test_class_argmax_is_argmax_with_first_maximum_on_ties():
    g = torch.Generator().manual_seed(0)
    for shape, dim in (((3, 4, 5, 6, 7), 1), ((2, 9, 8, 7), 0), ((2, 2, 5, 5, 5), 1)):
        x = torch.randint(0, 3, shape, generator=g).float()  # many ties
        assert torch.equal(class_argmax(x, dim), x.argmax(dim))
        y = torch.randn(shape, generator=g)
        assert torch.equal(class_argmax(y, dim), y.argmax(dim))
    assert class_argmax(torch.zeros(1, 3, 2)).tolist() == [[0, 0]]
