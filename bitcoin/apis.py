"""bitcoin: apis. None of its own: the dApp sees Bitcoin through `loans`' REST API (a loan's
timeline and transactions), which reads `bitcoin.selectors`."""
