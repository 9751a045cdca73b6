"""Built-in students: shapes, parameter counts, TorchScript export, training signal."""
import pytest
import torch

from slc.errors import SlcInputError
from slc.vision.students import build_student, list_students


@pytest.mark.parametrize("name,size,params", [("resnet18", 64, (11.1e6, 11.3e6)), ("resnet18-small", 32, (11.1e6, 11.3e6)),
                                              ("convnet", 32, (0.31e6, 0.33e6)), ("convnet-w64", 32, (0.08e6, 0.09e6)),
                                              ("mobilenet", 32, (0.4e6, 0.5e6))])
def test_students_shapes_and_sizes(name, size, params):
    torch.manual_seed(0)
    m = build_student(name, 10, 3).eval()
    n = sum(p.numel() for p in m.parameters())
    assert params[0] <= n <= params[1], n
    x = torch.randn(2, 3, size, size)
    assert m(x).shape == (2, 10)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x))


def test_one_step_lowers_the_kl_on_a_batch():
    torch.manual_seed(0)
    m = build_student("convnet", 5, 1)
    x, y = torch.randn(16, 1, 16, 16), torch.softmax(torch.randn(16, 5), -1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)  # the paper's default
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.kl_div(torch.log_softmax(m(x), -1), y, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_student_and_bad_sizes():
    assert list_students() == ["convnet", "convnet-w64", "mobilenet", "resnet18", "resnet18-small"]
    with pytest.raises(SlcInputError, match="expected a student in"):
        build_student("vgg", 10)
    with pytest.raises(SlcInputError):
        build_student("convnet", 1)
