"""PEFT's and torch's exact message texts that the prompt encoder reproduces (tests compare them with
PEFT's own): the unknown-encoder-type error and the two construction warnings."""

from __future__ import annotations

PEFT_TYPE_ERROR = "Prompt encoder type not recognized. Please use one of MLP (recommended) or LSTM."
MLP_NUM_LAYERS = 2  # PEFT compares encoder_num_layers with this default and warns when it differs


def mlp_num_layers_warning(type_name: str) -> str:
    """PEFT's exact warning text for an MLP encoder whose encoder_num_layers != 2."""
    return (
        f"for {type_name}, the argument `encoder_num_layers` is ignored. "
        f"Exactly {MLP_NUM_LAYERS} MLP layers are used."
    )


def lstm_dropout_warning(dropout: float, num_layers: int) -> str:
    """torch.nn.LSTM's exact warning text for dropout > 0 with a single layer."""
    return (
        "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
        f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}"
    )
