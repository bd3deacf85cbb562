"""The migration runner (plan / apply / status / verify) and its SQL splitter."""
