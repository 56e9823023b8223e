"""Models: the decoder-only Gemma 2 LM and the T5Gemma encoder-decoder LM.

The API everything after the models codes against:

    model = build_model(config, params=None, seed=0, dtype=np.float32)
        GemmaLM for a GemmaConfig, EncDecLM for an EncDecConfig. params: flat dict with
        Hugging Face keys (SPEC section 5); None initialises freshly from the seed.
    model.config, model.params
    model.forward(batch) -> logits (B, T, V), soft-capped
    model.loss_and_grads(batch) -> (loss: float, grads: dict with the keys of params)
    model.loss(batch) -> float
    EncDecLM.encode(input_ids, attention_mask=None) -> (B, S, De) encoder output (normed)

A batch is a dict of NumPy arrays:
    decoder-only:    input_ids (B, T), optional attention_mask (B, T), labels (B, T)
                     where labels[:, t] is the target of position t (-100 ignored)
    encoder-decoder: input_ids (B, S), attention_mask (B, S), decoder_input_ids (B, T),
                     labels (B, T)
"""
