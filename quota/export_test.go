package quota

// IntegerPath reports whether Credits prices model in integers (tests).
func (b *CostBook) IntegerPath(model string) bool {
	_, ok := b.scaled[model]
	return ok && b.marginOK
}
