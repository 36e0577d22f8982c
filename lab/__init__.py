"""The lab: training, experiment configs, model surgery, studies and the GPU-lease tools that
make neuralcodec's models. Not installed; imports only neuralcodec's public API."""
