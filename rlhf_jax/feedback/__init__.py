"""Human feedback: the durable store of prompts, samples and judgements (store.py)."""
