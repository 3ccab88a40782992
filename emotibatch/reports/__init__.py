"""What a person looks at: HTML reports and preview clips."""
